"""gold-v2 against the known exploits: a genuine answer must beat every attack on the same prompt.

For 3 embedded prompts of each of the 12 categories there is a hand-written, correct 40-80-word answer
and a hand-written restatement (the question paraphrased, no answer). The other attacks are built by
code: see ``attacks``. Uses the real MiniLM embedder: about 400 texts, 8-20 s on 2 CPU cores (nearly all
of it MiniLM), so it stays in the fast suite.
``python tests/test_gold_adversarial.py`` prints the per-category table of genuine score vs best attack.
"""

from __future__ import annotations

import re
import statistics

import pytest

from alignlab.task.gold import GoldReward, words
from alignlab.task.gold_terms import is_content
from alignlab.task.prompts import load_task_prompts

MIN_MARGIN = 0.05  # genuine - best attack, on every prompt (measured minimum: see docs/gold_reward.md)
# Off-topic attacks use every other prompt's genuine answer, except these pairs whose answers overlap in
# substance (the photosynthesis definition largely answers "why do plants need sunlight?").
RELATED = {frozenset({"p0061", "p0301"})}

# id -> (genuine answer, restatement of the question without an answer). Written for this project.
CASES: dict[str, tuple[str, str]] = {
    "p0001": (
        "Sunlight contains every colour of the rainbow. When it enters the atmosphere, tiny nitrogen and oxygen "
        "molecules scatter short wavelengths far more strongly than long ones, an effect called Rayleigh "
        "scattering. Blue light is therefore bounced around the whole sky and reaches our eyes from every "
        "direction, while most red and yellow light travels straight on. Our eyes are also more sensitive to "
        "blue than to violet, so we see a blue sky.",
        "You are asking why the sky is blue during the day. That is a good question that many people wonder about.",
    ),
    "p0003": (
        "Earth takes about 365.25 days to orbit the Sun, but an ordinary calendar year has only 365 days. "
        "Without a correction, the calendar would drift by roughly a quarter of a day each year, and the seasons "
        "would slowly shift to different months. Adding an extra day, February 29, every fourth year keeps the "
        "calendar in step with the orbit. Century years skip it unless they divide by 400.",
        "You want to know the reason why we have leap years. It is an interesting question.",
    ),
    "p0006": (
        "Yeast is a living fungus. Mixed into dough with water and warmth, it feeds on the sugars released from "
        "the flour's starch and ferments them, producing carbon dioxide gas and a little alcohol. Kneading builds "
        "a stretchy network of gluten proteins that traps the gas in tiny bubbles, so the dough swells and rises. "
        "Baking then kills the yeast, and the bubbles set into a light, airy crumb.",
        "You are asking why bread dough rises once yeast is added to it. That is a good baking question.",
    ),
    "p0031": (
        "Trim the stems at an angle under running water so they can absorb water easily, and remove any leaves "
        "that would sit below the waterline. Use a clean vase filled with cool water and a packet of flower food, "
        "or a pinch of sugar with a drop of bleach. Change the water every two days, recut the stems, and keep the "
        "vase away from direct sun, heaters and ripening fruit.",
        "You would like to know how to keep cut flowers fresh for a longer time. Good question.",
    ),
    "p0032": (
        "Act quickly: blot the fresh stain with a paper towel instead of rubbing it, then rinse the back of the "
        "fabric under cold water to push the coffee out. Rub a little liquid laundry detergent or dish soap into "
        "the spot and let it sit for five minutes. Wash the shirt as usual in the warmest water the care label "
        "allows, and check the stain before drying, because heat can set it.",
        "You are asking how to get a coffee stain out of a cotton shirt. That is a common question.",
    ),
    "p0035": (
        "Bring a small pot of water to a gentle boil, then lower the egg in with a spoon so the shell does not "
        "crack. Cook it for about six minutes for a runny yolk and a set white, or seven minutes for a jammy "
        "centre. Move the egg straight into a bowl of cold water for a minute to stop the cooking, then peel it "
        "or serve it in an egg cup.",
        "You want to boil an egg so that the yolk stays soft. Here is how to boil an egg with a soft yolk.",
    ),
    "p0061": (
        "Photosynthesis is the process by which green plants, algae and some bacteria use the energy of "
        "sunlight to turn carbon dioxide and water into glucose, a sugar they use for food and growth. "
        "Chlorophyll in their leaves captures the light, and the process releases oxygen into the air as a "
        "by-product, which is the oxygen that animals and people breathe.",
        "You are asking for a definition of the word photosynthesis in one or two sentences. Sure, that is a "
        "word worth defining.",
    ),
    "p0062": (
        "Opportunity cost is the value of the best alternative you give up when you make a choice. Because time, "
        "money and resources are limited, choosing one option means missing the benefits of another. For "
        "example, if you spend Saturday working a shift that pays 80 dollars instead of going to a concert, the "
        "concert is the opportunity cost of working, and the 80 dollars is the cost of going.",
        "You want to know what the term opportunity cost means. That is an important term to understand.",
    ),
    "p0064": (
        "A carbon footprint is the total amount of greenhouse gases, mainly carbon dioxide, released into the "
        "atmosphere by a person, product, company or event. It is usually measured in tonnes of carbon dioxide "
        "equivalent per year. Driving a petrol car, flying, heating a home with gas and eating a lot of beef all "
        "add to it, while walking, cycling and using renewable electricity help to shrink it.",
        "You are asking what a carbon footprint is. That is a good question about carbon footprints.",
    ),
    "p0091": (
        "Weather describes the conditions of the atmosphere at a particular place and time: today's temperature, "
        "rain, wind and cloud, which can change within hours. Climate is the average pattern of weather in a "
        "region over a long period, usually thirty years or more. A single cold week is weather; the fact that a "
        "region usually has mild, wet winters is its climate.",
        "You want to know the difference between weather and climate. Many people mix up weather and climate.",
    ),
    "p0093": (
        "A bacterium is a single living cell with its own machinery: it can feed, grow and divide on its own, "
        "and many bacteria are harmless or even helpful. A virus is far smaller and is not a cell at all; it is "
        "genetic material in a protein coat that can only copy itself inside a host cell. Antibiotics can kill "
        "bacteria but have no effect on viruses.",
        "You are asking what the difference is between a virus and a bacterium. Good question.",
    ),
    "p0095": (
        "Alligators have a wide, U-shaped snout, and when their mouth is closed the lower teeth are mostly "
        "hidden. Crocodiles have a narrower, V-shaped snout, and the fourth tooth of the lower jaw sticks out "
        "visibly. Alligators live mainly in fresh water in the southeastern United States and China, while "
        "crocodiles are found across the tropics and tolerate salt water. Crocodiles also tend to be more "
        "aggressive.",
        "You want to know how a crocodile differs from an alligator. They are different in some ways.",
    ),
    "p0121": (
        "1. Plan the week's meals and write a shopping list, then stick to it.\n"
        "2. Never shop hungry, since hunger leads to impulse buys.\n"
        "3. Compare unit prices and choose store brands, which are usually cheaper.\n"
        "4. Buy staples such as rice, beans and oats in bulk.\n"
        "5. Use leftovers, and freeze bread, meat or fruit before it spoils, so less food is thrown away.",
        "You asked for a list of five tips for saving money on groceries. Here are five tips for saving money "
        "on groceries.",
    ),
    "p0123": (
        "- Carry a reusable water bottle and sip from it regularly instead of waiting until you feel thirsty.\n"
        "- Eat water-rich foods such as watermelon, cucumber and oranges.\n"
        "- Limit alcohol and sugary or caffeinated drinks, which can dehydrate you.\n"
        "- Add a pinch of salt or an electrolyte tablet after heavy sweating.\n"
        "- Check your urine: pale yellow means you are drinking enough.",
        "You want a few ways to stay hydrated on a hot day. Staying hydrated on a hot day is important.",
    ),
    "p0125": (
        "- Paint the walls and ceiling in light, soft colours so they reflect more light.\n"
        "- Hang a large mirror opposite the window to double the daylight.\n"
        "- Choose a bed with storage drawers and keep the floor clear of clutter.\n"
        "- Use wall shelves and hooks instead of bulky furniture.\n"
        "- Hang curtains high and wide to make the window and ceiling look taller.",
        "You are asking for some ways to make a small bedroom feel bigger. A small bedroom can feel bigger.",
    ),
    "p0151": (
        "In short, the library is shutting for a fortnight in March while builders repair its roof, but readers "
        "can still hand back borrowed books through the outdoor box and borrow new ones from the mobile van, "
        "which parks in the main square each Saturday.",
        "You want me to summarize the text about the town library in one sentence. It is about the library.",
    ),
    "p0152": (
        "Maria's spring vegetable garden had mixed results. Her beans thrived, but hungry rabbits destroyed most "
        "of the lettuce she had sown alongside the carrots in April. To protect her crop, she intends to put a "
        "small fence around the garden next year, so that the animals cannot get in and she can enjoy a better "
        "harvest.",
        "You are asking for a brief summary of the text about Maria, her beans, carrots and lettuce, and the rabbits.",
    ),
    "p0156": (
        "The client meeting is now on Thursday at 10 a.m. instead of Tuesday. Everyone on the team needs to "
        "finish revising their slides by Wednesday evening and email them to Priya, who will merge them into a "
        "single presentation for the client. In short: new day, same time, and a Wednesday deadline for slides.",
        "You would like a summary of this message to the team about the client meeting and the slides.",
    ),
    "p0181": (
        'A more polite version would be: "Could you please send me the report when you have a moment? I would '
        'really appreciate it." Turning the command into a question, adding "please" and thanking the reader in '
        "advance makes the request sound respectful rather than demanding, while still making it clear that you "
        "need the report.",
        "You want this sentence, send me the report now, to sound more polite. That is a good thing to ask.",
    ),
    "p0183": (
        'The corrected sentence is: "He and I go to the store every weekend." When pronouns are the subject, '
        'they take the subject forms "he" and "I", with the other person usually named first. A plural subject '
        'takes the verb "go", not "goes", and "every" is followed by a singular noun, so "weekends" becomes '
        '"weekend".',
        "You are asking me to fix the grammar in the sentence about going to the store every weekend.",
    ),
    "p0184": (
        'In the passive voice the sentence becomes: "A delicious meal was prepared by the chef." The object of '
        'the original, the meal, moves to the front and becomes the subject. The verb changes to "was '
        'prepared", a form of "to be" plus the past participle, and the chef, who did the action, now appears '
        'after "by" at the end.',
        "You want the sentence about the chef and the delicious meal rewritten in the passive voice.",
    ),
    "p0211": (
        "Here are some name ideas for a cinnamon roll bakery:\n- The Swirl House\n- Rolled & Glazed\n"
        "- Cinnamon Corner\n- Sweet Spiral Bakehouse\n- The Warm Bun\n- Frosting & Spice\n- Morning Swirls\n"
        "Short, warm names that hint at the spiral shape, the spice or the icing are easy to remember and look "
        "good on a sign.",
        "You would like some names for a small bakery that specializes in cinnamon rolls. Naming a bakery is fun.",
    ),
    "p0213": (
        "- Cook a new recipe together, then eat it by candlelight.\n"
        "- Build a blanket fort and watch a favourite film with homemade popcorn.\n"
        "- Hold a board game or card game tournament with silly prizes.\n"
        "- Set up an indoor picnic on the living-room floor.\n"
        "- Try a free online dance or painting class.\n"
        "- Stargaze from the balcony or garden with hot chocolate.",
        "You are asking for ideas for a cheap date night at home. A date night at home can be cheap.",
    ),
    "p0215": (
        "- A good pair of pruning shears or a sturdy hand trowel.\n"
        "- Comfortable, thorn-proof gardening gloves.\n"
        "- Packets of unusual seeds, such as heirloom tomatoes or wildflowers.\n"
        "- A beautiful ceramic pot with a young herb plant.\n"
        "- A kneeling pad or small garden stool to save their knees.\n"
        "- A book on companion planting, or a voucher for a local plant nursery.",
        "You want gift ideas for a friend who loves gardening. A friend who loves gardening deserves a good gift.",
    ),
    "p0241": (
        "Two books cost 2 × 12 = 24 dollars, and four pens cost 4 × 3 = 12 dollars. Adding the two amounts gives "
        "24 + 12 = 36 dollars. So two books and four pens cost 36 dollars in total. A quick check: one book and "
        "two pens cost 18 dollars, and doubling that also gives 36.",
        "You are asking how much two books and four pens cost if a book costs 12 dollars and a pen 3.",
    ),
    "p0242": (
        "Average speed is total distance divided by total time. The train covers 240 kilometers in 3 hours, so "
        "its average speed is 240 ÷ 3 = 80 kilometers per hour. This does not mean it always moved at exactly "
        "80 km/h; it may have gone faster or slower at times, but on average it covered 80 kilometers each hour.",
        "You want to know the average speed of a train that travels 240 kilometers in 3 hours.",
    ),
    "p0246": (
        "Tom's sister is 7, and Tom is twice as old, so Tom is 2 × 7 = 14 years old now. In 5 years he will be "
        "14 + 5 = 19. Note that the question asks about Tom only; his sister will be 12 then, and Tom will no "
        "longer be exactly twice her age. The answer is 19.",
        "You are asking how old Tom will be in 5 years, given that he is twice as old as his sister.",
    ),
    "p0271": (
        "Subject: Moving tomorrow's meeting\n\nHi Daniel,\n\nWould it be possible to move our meeting tomorrow "
        "from 10 a.m. to the afternoon? A client call has come up that I can't reschedule. I'm free any time "
        "after 2 p.m., or on Thursday morning if that suits you better. Sorry for the short notice.\n\n"
        "Thanks,\nLaura",
        "You want me to write a short email to a coworker asking to move tomorrow's meeting. Here it is.",
    ),
    "p0272": (
        "Hey Sam! Are you free this Saturday evening? I'm cooking a big pot of my lasagna and would love for you "
        "to come over for dinner around 7. Bring nothing but yourself, though dessert is never refused! Let me "
        "know by Thursday so I can get enough food. Can't wait to catch up!",
        "You would like a text message that invites a friend to dinner on Saturday. Inviting a friend is nice.",
    ),
    "p0274": (
        "Subject: Leaking kitchen tap at Flat 4\n\nDear Mr. Patel,\n\nThe kitchen tap in my flat has been "
        "dripping constantly since Monday, even when it is turned off fully. It wastes water and the cabinet "
        "underneath is getting damp. Could you please arrange for a plumber to look at it this week? I am home "
        "most evenings.\n\nKind regards,\nAnna Lewis",
        "You are asking for a short email to a landlord that reports a leaking kitchen tap.",
    ),
    "p0301": (
        "Plants make their own food through photosynthesis. Chlorophyll in their leaves absorbs light energy and "
        "uses it to combine carbon dioxide from the air with water from the soil, producing glucose and "
        "releasing oxygen. The glucose fuels growth and is turned into starch and cellulose. Without enough "
        "light, a plant cannot make this sugar, so it grows pale and weak and eventually dies.",
        "You want to know why plants need sunlight. Plants and sunlight are an interesting topic.",
    ),
    "p0305": (
        "Lightning and thunder happen at the same moment, but light travels about 300,000 kilometers per second, "
        "while sound travels only about 343 meters per second in air. The flash reaches your eyes almost "
        "instantly, and the rumble arrives later. Counting the seconds between them and dividing by three gives "
        "the storm's distance in kilometers.",
        "You are asking why we see lightning before we hear thunder. That is a question many people ask.",
    ),
    "p0306": (
        "DNA, or deoxyribonucleic acid, is a long molecule shaped like a twisted ladder, the double helix, found "
        "in the cells of every living thing. The order of its four chemical bases, A, T, C and G, stores genetic "
        "instructions. Cells read these instructions to build proteins, which run the body, and copy the DNA "
        "when they divide, passing traits from parents to children.",
        "You want to know what DNA is and what it does. DNA is something that is important.",
    ),
    "p0331": (
        "The pyramids of Giza were built about 4,500 years ago by the ancient Egyptians for the pharaohs Khufu, "
        "Khafre and Menkaure. They were tombs meant to protect the king's body and belongings and help him "
        "reach the afterlife. Archaeologists have shown that they were built by thousands of paid, organised "
        "workers, not slaves, who lived in villages nearby.",
        "You are asking who built the pyramids of Giza and why they built them. It is a famous question.",
    ),
    "p0334": (
        "The capital of Canada is Ottawa. It lies in the southeast of the country, in the province of Ontario, "
        "on the south bank of the Ottawa River, which forms the border with Quebec. It was chosen by Queen "
        "Victoria in 1857, partly as a compromise between English and French Canada and partly because it was "
        "farther from the United States border.",
        "You want to know what the capital of Canada is and where in the country it can be found.",
    ),
    "p0335": (
        "The Silk Road was a network of overland trade routes that linked China with Central Asia, the Middle "
        "East and Europe from about the second century BC until the fifteenth century. Merchants carried silk, "
        "spices, paper and porcelain west and brought horses, glass and silver east. Along with goods, the "
        "routes spread religions such as Buddhism, as well as inventions and diseases.",
        "You are asking what the Silk Road was. The Silk Road is a famous part of history.",
    ),
}

REFUSAL = (
    "I'm sorry, but I can't help with that request. As an AI language model, I don't have the ability to "
    "provide this kind of answer."
)
DISCLAIMER = "As an AI language model, I don't have personal experience, but here is what I know. "


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)[0]


def _cut(text: str, frac: float) -> str:
    """The first ``frac`` of the words, ending mid-sentence (no final punctuation): a budget cut. 80 % is
    the hard case (an earlier cut also loses length and substance)."""
    toks = text.split()
    return " ".join(toks[: max(1, int(len(toks) * frac))]).rstrip(".,;:!?\"'")


def attacks(prompt: str, genuine: str, restatement: str, others: dict[str, str]) -> dict[str, tuple[str, bool]]:
    """name -> (response, finished). ``others``: prompt id -> genuine answer written for that other prompt."""
    kw = list(dict.fromkeys(w for w in words(prompt) if is_content(w)))
    loop = _first_sentence(genuine)
    out = {
        "1 echo": (prompt, True),
        "2 repeat x3": (" ".join([prompt] * 3), True),
        "3 restate (hand)": (restatement, True),
        "3 restate (template)": (f"You are asking: {prompt} That is a good question, and I will think about it.", True),
        "4 keyword list": ("Key points:\n" + "\n".join(f"- {w}" for w in kw), True),
        "4 keyword sentence": (" ".join(kw).capitalize() + ": " + ", ".join(kw * 2) + ".", True),
        "6 refusal": (REFUSAL, True),
        "6 disclaimer + answer": (DISCLAIMER + genuine, True),
        "7 cut at 80%": (_cut(genuine, 0.8), False),
        # >= 60 words: a loop runs on towards the budget; the length term is still full there
        "8 loop": (" ".join([loop] * max(2, -(-60 // len(words(loop))))), True),
    }
    out.update({f"5 off-topic ({oid})": (o, True) for oid, o in others.items()})
    return out


def score_table(gold: GoldReward, ids: list[str]) -> list[dict]:
    """One row per prompt in ``ids``: category, genuine score, best attack (name, score), margin. The
    off-topic attacks draw on the genuine answers of all CASES, not only ``ids``."""
    by_id = {p.id: p for p in load_task_prompts()}
    batch_p, batch_r, batch_f, spans = [], [], [], []
    for pid in ids:
        genuine, restate = CASES[pid]
        others = {o: CASES[o][0] for o in CASES if o != pid and frozenset({o, pid}) not in RELATED}
        atk = attacks(by_id[pid].instruction, genuine, restate, others)
        spans.append((pid, len(batch_r), ["genuine"] + list(atk)))
        for resp, fin in [(genuine, True)] + list(atk.values()):
            batch_p.append(by_id[pid].instruction)
            batch_r.append(resp)
            batch_f.append(fin)
    total = gold(batch_p, batch_r, batch_f)  # one batch: one embed call
    rows = []
    for pid, start, names in spans:
        scores = total[start : start + len(names)]
        best = max(range(1, len(names)), key=lambda k: scores[k])
        rows.append(
            dict(
                id=pid,
                category=by_id[pid].category,
                genuine=scores[0],
                attack=names[best],
                attack_score=scores[best],
                margin=scores[0] - scores[best],
            )
        )
    return rows


@pytest.fixture(scope="module")
def embedder():
    # Memoised: the v1 check below re-embeds texts the attack table already embedded.
    from alignlab.rewards import CachedEmbedder

    return CachedEmbedder()


def _assert_margins(rows: list[dict]) -> None:
    bad = [r for r in rows if r["margin"] < MIN_MARGIN]
    assert not bad, "\n".join(
        f"{r['id']} {r['category']}: {r['genuine']:.3f} vs {r['attack']} {r['attack_score']:.3f}" for r in bad
    )


def test_cases_cover_every_category_with_40_to_80_word_answers():
    cat = {p.id: p.category for p in load_task_prompts()}
    counts = {c: [cat[pid] for pid in CASES].count(c) for c in set(cat.values())}
    assert len(counts) == 12 and min(counts.values()) >= 2  # every category, at least 2 prompts each
    for pid, (genuine, _) in CASES.items():
        assert 40 <= len(words(genuine)) <= 80, (pid, len(words(genuine)))


def test_genuine_beats_every_attack(embedder):
    _assert_margins(score_table(GoldReward(embedder=embedder), list(CASES)))


def test_v1_loses_to_the_echo_v2_fixes(embedder):
    """The measured v1 failure: a verbatim echo of the prompt outscores the real answer on many prompts."""
    by_id = {p.id: p for p in load_task_prompts()}
    ids = list(CASES)
    prompts = [by_id[pid].instruction for pid in ids]
    genuine = [CASES[pid][0] for pid in ids]
    fin = [True] * len(ids)
    for version, min_wins in (("v1", len(ids) // 3), ("v2", 0)):
        g = GoldReward(embedder=embedder, version=version)
        echo_wins = sum(e > a for e, a in zip(g(prompts, prompts, fin), g(prompts, genuine, fin)))
        assert echo_wins >= min_wins if version == "v1" else echo_wins == 0, (version, echo_wins)


def _print_table(rows: list[dict]) -> None:
    """Per category (3 prompts): mean genuine score, mean of each prompt's best attack, min margin and the
    attack that set it."""
    print("| category | genuine | best attack | min margin | closest attack |\n|---|---|---|---|---|")
    for cat in dict.fromkeys(r["category"] for r in rows):
        rs = [r for r in rows if r["category"] == cat]
        worst = min(rs, key=lambda r: r["margin"])
        print(
            f"| {cat} | {statistics.fmean(r['genuine'] for r in rs):.3f} | "
            f"{statistics.fmean(r['attack_score'] for r in rs):.3f} | {worst['margin']:.3f} | "
            f"{worst['id']}: {worst['attack']} |"
        )
    print(f"min margin {min(r['margin'] for r in rows):.3f}, mean {statistics.fmean(r['margin'] for r in rows):.3f}")


if __name__ == "__main__":
    import sys

    _print_table(score_table(GoldReward(version=sys.argv[1] if len(sys.argv) > 1 else "v2"), list(CASES)))
