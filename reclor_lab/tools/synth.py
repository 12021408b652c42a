"""A deterministic generator of ReClor-format data, written for this kit.

ReClor's license forbids redistributing its text, so the kit ships its own: short invented
arguments (60-150 words) with ReClor-style question stems, four options and a label, in the
official file layout. Every passage, option and name here was written for this kit; nothing is
copied or paraphrased from ReClor or the LSAT.

Records are built from argument *schemes* (a causal claim, a syllogism, an argument with a gap,
a flawed inference, ...) filled with invented towns, people, professions, policies and products.
The correct option always follows from the passage's entities and logical structure; the
distractors reverse a relation, change a quantifier, describe a different flaw, restate a
premise, or talk about things the passage never mentions. So the task is solvable from the
text alone, which is what lets a tiny model learn it in seconds.

>>> recs = generate_split("train", 3, seed=0)
>>> sorted(recs[0])
['answers', 'context', 'id_string', 'label', 'question']
>>> sorted(generate_split("test", 1, seed=0)[0])
['answers', 'context', 'id_string', 'question', 'question_type']
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable, Literal

from reclor_lab.config import BUNDLED_DATA_DIR, NUM_LABELS, OPTION_LETTERS
from reclor_lab.data import format_example
from reclor_lab.results.qtypes import QUESTION_TYPES

Split = Literal["train", "val", "test"]

QT = {name: i for i, name in enumerate(QUESTION_TYPES)}

#: Share of each answer position among the labels (A, B, C, D): uneven, as in real ReClor.
LABEL_WEIGHTS = (0.23, 0.27, 0.26, 0.24)
#: Records per split written by :func:`write_bundled_data`.
DEFAULT_SIZES = {"train": 1000, "val": 256, "test": 256}
#: The seed of the bundled files; each split derives its own stream from it.
DEFAULT_SEED = 2024
#: Seed of the pre-training corpus of the tiny model: a separate stream, never val/test records.
PRETRAIN_SEED = 777_000
_SPLIT_OFFSET = {"train": 0, "val": 1_000_003, "test": 2_000_003, "pretrain": 3_000_017}

# --- slot pools ------------------------------------------------------------------------------

TOWNS = (
    "Norvale", "Brackton", "Eldham", "Quillport", "Ravensby", "Marlow Cross", "Tessford",
    "Halvering", "Ondrick", "Pellbury", "Cindermoor", "Ashgrove", "Wexley", "Dunmarsh",
    "Fenwick Bay", "Corrimore", "Lissan", "Vantry", "Hobbleton", "Greyhaven", "Stavely",
    "Orrin Falls", "Belcourt", "Mirefield", "Kestrel Hill", "Yarrowby", "Tamsworth", "Ulveston",
    "Pinecrest", "Saltmere", "Brindle", "Oakhurst",
)
NAMES = (
    "Amara", "Boris", "Chen", "Dalia", "Emeka", "Freya", "Gustavo", "Hana", "Ivan", "Jolene",
    "Kofi", "Lucia", "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Sanjay", "Tamsin",
    "Umar", "Vera", "Wendell", "Ximena", "Yusuf", "Zora", "Anders", "Bianca", "Dmitri", "Esther",
    "Farid", "Greta", "Hugo", "Ines", "Jonas", "Keiko", "Leon", "Mina", "Nikolai", "Olga",
)
PROFESSIONS = (
    "economist", "city planner", "physician", "historian", "journalist", "engineer", "biologist",
    "school principal", "pharmacist", "architect", "sociologist", "council member", "farmer",
    "police chief", "veterinarian", "librarian", "statistician", "nutritionist", "geologist",
    "museum curator", "restaurant critic", "union representative", "software developer",
)
GROUPS = (
    "the Norvale chess club", "the regional choir", "the hospital's night staff",
    "the volunteer fire brigade", "the county rowing team", "the university debate society",
    "the harbor pilots' guild", "the city orchestra", "the hiking association",
    "the community garden", "the photography circle", "the cycling league",
    "the translation bureau", "the beekeepers' cooperative", "the town archive",
    "the robotics workshop",
)
PROPERTIES = (
    "trained in first aid", "fluent in Portuguese", "eligible for the travel grant",
    "allowed to vote at the annual meeting", "required to attend the spring workshop",
    "registered with the county office", "a holder of a night-shift permit",
    "exempt from the membership fee", "familiar with the new filing system",
    "invited to the autumn dinner", "responsible for the equipment store", "a licensed driver",
    "able to read sheet music", "a member of the safety committee", "entitled to a parking space",
    "listed in the official directory", "qualified to lead the training sessions",
    "a resident of the old quarter", "authorized to sign contracts", "scheduled for the late shift",
)
FILLERS = (
    "{town} is a mid-sized town of about {num} thousand residents.",
    "The matter has been debated at several public meetings, some of which lasted well into the night.",
    "Local newspapers have covered the issue for months.",
    "Both supporters and critics agree that the question deserves careful study.",
    "{town} has often been compared with neighboring towns of a similar size and history.",
    "The figures were collected by the regional statistics office and checked by an independent auditor.",
    "The topic came up again during last year's budget discussions.",
    "Similar debates have taken place in many other towns in the region.",
    "Several residents wrote letters to the council about the issue.",
    "The council publishes a short report on such questions every year.",
    "Most of the people involved have lived in {town} for a long time.",
    "{name2}, {a_prof2} who follows such matters closely, has called the question an important one.",
    "Some of the data go back more than {num} years.",
    "The discussion has drawn attention from people well beyond {town}.",
)

# (policy, adopted-verb phrase, outcome noun phrase (plural), other change that also reduces it)
CAUSAL = (
    ("a ban on heavy trucks in the town center", "introduced", "traffic accidents",
     "repaved its most dangerous crossings"),
    ("free evening classes for adults", "started offering", "unemployed residents",
     "saw two large factories open nearby"),
    ("stricter inspections of restaurant kitchens", "began", "cases of food poisoning",
     "had an unusually cold summer"),
    ("brighter street lighting", "installed", "burglaries", "hired twenty additional police officers"),
    ("a curfew for teenagers", "imposed", "acts of vandalism", "opened a new youth center"),
    ("a fee on plastic bags", "introduced", "plastic items found on its beaches",
     "organized weekly volunteer beach cleanups"),
    ("a school breakfast program", "launched", "missed school days",
     "had a much milder flu season than usual"),
    ("a speed limit of thirty kilometers per hour", "imposed", "injuries to cyclists",
     "built separate cycle lanes on its main roads"),
    ("a subsidy for home insulation", "offered", "complaints about heating bills",
     "saw natural gas prices fall sharply"),
    ("a smoking ban in bars", "introduced", "hospital admissions for asthma",
     "closed its last coal-burning power plant"),
    ("a new early-warning system for floods", "installed", "flood-damaged homes",
     "had the driest spring in forty years"),
    ("a reward program for recycling", "started", "tons of waste sent to landfill",
     "lost its largest paper mill"),
)

# Arguments with a gap: subject, premise (what it has), conclusion (what is claimed to follow),
# the assumption that links them, a stronger-than-needed claim, an irrelevant fact.
GAPS = (
    dict(subj="the new library in {town}", prem="is open until midnight",
         concl="will attract more students than the old one",
         link="many students prefer to study late in the evening",
         strong="every student in {town} will use the new library every week",
         irr="the new library cost less to build than the old one"),
    dict(subj="the ferry service to {town}", prem="now runs every twenty minutes",
         concl="will take many cars off the coastal road",
         link="some drivers on the coastal road would switch to a frequent ferry",
         strong="nobody will ever drive on the coastal road again",
         irr="the ferry's crew members were all trained abroad"),
    dict(subj="the bakery on {town}'s market square", prem="has started using local flour",
         concl="will win back the customers it lost last year",
         link="the customers it lost care about where the flour comes from",
         strong="local flour is the only thing that matters to any customer",
         irr="the bakery's owner also runs a cafe in another town"),
    dict(subj="the clinic in {town}", prem="has hired two more nurses",
         concl="will shorten the time patients spend waiting",
         link="a shortage of nurses is one cause of the long waits",
         strong="patients will no longer have to wait at all",
         irr="the clinic's building was painted last spring"),
    dict(subj="the museum of {town}", prem="has dropped its entrance fee",
         concl="will receive more visitors next year",
         link="the entrance fee kept some people from visiting",
         strong="every resident of {town} will visit the museum",
         irr="the museum's collection includes several old maps"),
    dict(subj="the farm cooperative near {town}", prem="has switched to drought-resistant wheat",
         concl="will harvest more grain in dry years",
         link="the new wheat yields at least as much as the old wheat in dry years",
         strong="the cooperative's harvest will never fall again",
         irr="the cooperative was founded more than a century ago"),
    dict(subj="the bus company in {town}", prem="has bought quieter electric buses",
         concl="will receive fewer noise complaints",
         link="many of the noise complaints were about the buses",
         strong="all noise in {town} comes from buses",
         irr="the electric buses are painted a brighter color"),
    dict(subj="the high school in {town}", prem="has reduced class sizes",
         concl="will see its students' test scores improve",
         link="students in smaller classes tend to learn more",
         strong="class size is the only factor that affects test scores",
         irr="the school's sports teams won several trophies"),
    dict(subj="the theater company of {town}", prem="has moved its shows to the weekend",
         concl="will sell more tickets",
         link="more people are free to attend shows on weekends",
         strong="nobody has ever attended a show on a weekday",
         irr="the company's director has written two novels"),
    dict(subj="the software firm in {town}", prem="has let its staff work from home",
         concl="will keep more of its experienced employees",
         link="some experienced employees value being able to work from home",
         strong="every employee of the firm wants to work only from home",
         irr="the firm's offices are close to the railway station"),
)

# Flaws: passage templates (one per flaw) and descriptions of each flaw.
FLAW_DESCRIPTIONS = {
    "sample": ("draws a general conclusion from a sample that may not be representative",
               "generalizes from a small and possibly unusual group to a much larger one"),
    "causal": ("takes for granted that because one event followed another, the first caused the second",
               "mistakes a mere correlation between two things for evidence that one causes the other"),
    "necessary": ("treats a condition that is sufficient for an outcome as if it were also necessary",
                  "infers that something is false merely because one way of showing it true does not apply"),
    "person": ("attacks the person who made a claim rather than the claim itself",
               "rejects a proposal on the basis of the character of the person who proposed it"),
    "whole": ("assumes that what is true of each part must also be true of the whole",
              "concludes that a group has a property merely because each of its members has it"),
    "circular": ("presupposes the truth of the very conclusion it is trying to establish",
                 "uses its conclusion as one of the reasons offered for that conclusion"),
}
FLAW_PASSAGES = {
    "sample": (
        "{name}, {a_prof}, asked {small} customers at a single shop in {town} whether they "
        "liked {product}, and all of them said they did. {name} concludes that most people in "
        "the country like {product}.",
        "Last week {small} members of {group} tried {product}, and every one of them praised it. "
        "So {product} will surely be popular with the general public.",
    ),
    "causal": (
        "In {town}, {outcome} fell in the year after the council {adopted} {policy}. The council "
        "therefore claims that {policy} caused the decline.",
        "{name}, {a_prof}, notes that {outcome} dropped soon after {town} {adopted} {policy}. "
        "So, {name} argues, the drop must be due to {policy}.",
    ),
    "necessary": (
        "Anyone who is {p1} may enter the archive of {town}. {name} is not {p1}. Therefore, "
        "{name} may not enter the archive of {town}.",
        "Members of {group} who are {p1} receive a certificate. {name} is not {p1}, so {name} "
        "cannot have received a certificate.",
    ),
    "person": (
        "{name}, {a_prof}, has proposed {policy} for {town}. But {name} was once fined for "
        "ignoring the town's own rules. So the proposal should be rejected.",
        "The plan to adopt {policy} in {town} comes from {name}, who has changed careers three "
        "times. Someone so unsteady cannot be trusted, so the plan is a bad one.",
    ),
    "whole": (
        "Each player in {group} is excellent on their own. Therefore, {group} must be an "
        "excellent team.",
        "Every room in the new town hall of {town} is quiet. So the building as a whole is "
        "certainly a quiet building.",
    ),
    "circular": (
        "{name}, {a_prof}, says that {policy} is the best policy for {town}, because no other "
        "policy is better for {town} than {policy}.",
        "{product} is the most reliable brand, since it is more reliable than every other "
        "brand. So shoppers in {town} should trust {product}.",
    ),
}
PRODUCTS = (
    "the Vireo bicycle helmet", "Morrow's oat biscuits", "the Tallis electric kettle",
    "Brightleaf tea", "the Carrow reading lamp", "Opaline shampoo", "the Zephyr folding chair",
    "Quarry Hill cheese", "the Nimbus umbrella", "Saffron Lane soup",
)

# Paradoxes: a surprising pair of facts and what explains it.
PARADOXES = (
    dict(fact="{town} doubled the number of parking spaces downtown, yet shops downtown report "
              "fewer customers than before",
         expl="a large shopping center with free parking opened just outside {town} at the same time",
         deepen="the new parking spaces downtown are almost always full",
         irr="shops in {town} close earlier on Sundays than on other days"),
    dict(fact="the hospital in {town} hired more doctors, yet the average waiting time at the "
              "hospital grew",
         expl="the clinic next door closed, sending its patients to the hospital",
         deepen="each new doctor sees as many patients a day as the other doctors",
         irr="the hospital in {town} was built more than fifty years ago"),
    dict(fact="sales of umbrellas in {town} fell last year, even though it rained more often "
              "than usual",
         expl="the shops in {town} that sold umbrellas were closed for most of the year for repairs",
         deepen="most residents of {town} owned no umbrella at the start of the year",
         irr="umbrellas sold in {town} come in many different colors"),
    dict(fact="the orchard near {town} planted more apple trees, but it harvested fewer apples",
         expl="the new trees will not bear fruit for several years, and a late frost damaged the old trees",
         deepen="the orchard's new trees were planted in its most fertile soil",
         irr="the orchard sells its apples at a market in {town}"),
    dict(fact="the library in {town} bought many new books, yet fewer books were borrowed "
              "than the year before",
         expl="the library was closed for three months while the new shelves were installed",
         deepen="the new books were chosen from the titles residents most often requested",
         irr="the library's reading room has large windows"),
    dict(fact="ticket prices for the {town} football club rose, yet attendance at its matches increased",
         expl="the club won its league for the first time and played far more exciting matches",
         deepen="the club's stadium has not changed in size or comfort",
         irr="the club was founded by a group of railway workers"),
)

QUESTIONS: dict[str, tuple[str, ...]] = {
    "weaken": (
        "Which one of the following, if true, most seriously weakens the argument?",
        "Which one of the following, if true, casts the most doubt on {name}'s conclusion?",
        "Which one of the following, if true, most undermines the reasoning above?",
    ),
    "strengthen": (
        "Which one of the following, if true, most strengthens the argument?",
        "Which one of the following, if true, provides the most support for {name}'s conclusion?",
        "Which one of the following, if true, most strongly supports the argument above?",
    ),
    "evaluate": (
        "Which one of the following would it be most useful to know in order to evaluate the argument?",
        "The answer to which one of the following questions would be most helpful in evaluating {name}'s argument?",
    ),
    "must": (
        "If the statements above are true, which one of the following must also be true?",
        "Which one of the following can be properly inferred from the statements above?",
        "If all of the statements above are true, which one of the following must be true?",
    ),
    "assume": (
        "The argument relies on which one of the following assumptions?",
        "Which one of the following is an assumption required by the argument?",
        "The argument depends on assuming which one of the following?",
    ),
    "sufficient": (
        "The conclusion follows logically if which one of the following is assumed?",
        "Which one of the following, if assumed, enables the conclusion above to be properly drawn?",
    ),
    "flaw": (
        "The reasoning in the argument is flawed because the argument",
        "The reasoning above is most vulnerable to criticism on the grounds that it",
        "Which one of the following most accurately describes a flaw in the argument's reasoning? The argument",
    ),
    "main": (
        "Which one of the following most accurately expresses the main conclusion of the argument?",
        "The main point of the argument is that",
        "Which one of the following most accurately states the conclusion drawn in the argument?",
    ),
    "support": (
        "The statements above, if true, most strongly support which one of the following?",
        "Which one of the following is most strongly supported by the information above?",
    ),
    "resolve": (
        "Which one of the following, if true, most helps to resolve the apparent discrepancy described above?",
        "Which one of the following, if true, most helps to explain the surprising result described above?",
    ),
}


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _pick_other(rng: random.Random, pool: tuple, *exclude) -> object:
    while True:
        x = rng.choice(pool)
        if x not in exclude:
            return x


def _fillers(rng: random.Random, slots: dict, lo: int, hi: int) -> list[str]:
    k = rng.randint(lo, hi)
    return [f.format(**slots) for f in rng.sample(FILLERS, k)]


def _passage(rng: random.Random, core: list[str], slots: dict, lo: int = 0, hi: int = 3) -> str:
    """The core sentences with a few background sentences before (and sometimes after) them."""
    extra = _fillers(rng, slots, lo, hi)
    cut = rng.randint(0, len(extra))
    return " ".join(extra[:cut] + core + extra[cut:])


def _base_slots(rng: random.Random) -> dict:
    town, town2, town3 = rng.sample(TOWNS, 3)
    name, name2 = rng.sample(NAMES, 2)
    prof, prof2 = rng.sample(PROFESSIONS, 2)
    return dict(town=town, town2=town2, town3=town3, name=name, name2=name2, prof=prof,
                prof2=prof2, num=rng.randint(12, 95), group=rng.choice(GROUPS),
                product=rng.choice(PRODUCTS), small=rng.choice(("five", "six", "eight", "ten", "twelve")),
                a_prof=_a(prof), a_prof2=_a(prof2))


# --- schemes: each returns (context, question, correct, [3 distractors], question-type name) ---
#
# A distractor is a wrong-role template (the reverse relation, a different quantifier, a premise,
# an irrelevant fact, a description of another flaw). With probability ``HARD_SHARE`` it is filled
# with the passage's own entities (hard: only the logic tells it apart); otherwise with other
# towns, people, policies or properties (it talks about things the passage never mentions).

#: Share of distractors that reuse the passage's own entities.
HARD_SHARE = 0.25


def _dis(rng: random.Random, templates: list[str], own: dict, foreign: dict) -> list[str]:
    return [t.format(**(own if rng.random() < HARD_SHARE else foreign)) for t in templates]


def _causal(rng: random.Random, kind: str) -> tuple:
    s = _base_slots(rng)
    (policy, adopted, outcome, other), (policy2, adopted2, outcome2, other2) = rng.sample(CAUSAL, 2)
    s.update(policy=policy, adopted=adopted, outcome=outcome, other=other, pct=rng.choice((15, 20, 25, 30, 40)),
             period=rng.choice(("two years", "eighteen months", "three years")))
    f = dict(s, town=s["town3"], name=s["name2"], prof=s["prof2"], a_prof=s["a_prof2"], policy=policy2,
             adopted=adopted2, outcome=outcome2, other=other2)
    core = rng.choice((
        ["Two years ago {town} {adopted} {policy}.",
         "Since then, the number of {outcome} in {town} has fallen by {pct} percent.",
         "{name}, a local {prof}, concludes that {policy} is responsible for the decline in {outcome}."],
        ["{name}, {a_prof}: When {town} {adopted} {policy}, many residents doubted that it would make any difference.",
         "Yet over the following {period}, {outcome} in {town} fell by {pct} percent.",
         "Clearly, {policy} reduced the number of {outcome}."],
        ["According to {name}, {a_prof} in {town}, the town's decision to adopt {policy} has paid off.",
         "In the {period} after the town {adopted} it, the number of {outcome} dropped by {pct} percent.",
         "So, {name} argues, {policy} caused this drop."],
    ))
    ctx = _passage(rng, [c.format(**s) for c in core], s)
    weak, weak_b = rng.sample((
        "Over the same {period}, {outcome} fell by about as much in {town2}, which never {adopted} {policy}.",
        "The decline in {outcome} in {town} had already begun well before the town {adopted} {policy}.",
        "Shortly before the change, {town} also {other}, which is known to reduce {outcome}.",
    ), 2)
    strong, strong_b = rng.sample((
        "In nearby towns that did not adopt {policy}, the number of {outcome} stayed the same.",
        "When {policy} was suspended in {town} for several months, {outcome} rose again.",
        "Towns similar to {town} that adopted {policy} later also saw {outcome} decline soon afterwards.",
    ), 2)
    irr, irr_b = rng.sample((
        "Some residents of {town} complained that {policy} was adopted without enough public debate.",
        "Adopting {policy} cost {town} more money than its council had expected.",
        "{name} was one of the first people to propose {policy} for {town}.",
    ), 2)
    q = rng.choice(QUESTIONS[kind]).format(**s)
    if kind == "weaken":
        return ctx, q, weak.format(**s), _dis(rng, [strong, irr, rng.choice((strong_b, irr_b))], s, f), "Weaken"
    if kind == "strengthen":
        return ctx, q, strong.format(**s), _dis(rng, [weak, irr, rng.choice((weak_b, irr_b))], s, f), "Strengthen"
    good = rng.choice((
        "Did {outcome} also decline in towns like {town} that did not adopt {policy}?",
        "Had the number of {outcome} in {town} already been falling before {policy} was adopted?",
    ))
    bad = ["Has {name} lived in {town} for more than ten years?",
           "Was {policy} more expensive to adopt in {town} than {name} expected?",
           "Is {policy} popular among the younger residents of {town}?"]
    return ctx, q, good.format(**s), _dis(rng, bad, s, f), "Evaluation"


def _syllogism(rng: random.Random, kind: str) -> tuple:
    s = _base_slots(rng)
    p1, p2, p3, q1, q2, q3 = rng.sample(PROPERTIES, 6)
    s.update(p1=p1, p2=p2, p3=p3)
    f = dict(s, name=s["name2"], group=_pick_other(rng, GROUPS, s["group"]), p1=q1, p2=q2, p3=q3)
    if kind == "must":
        core = rng.choice((
            ["Everyone in {group} who is {p1} is also {p2}.", "No one who is {p2} is {p3}.",
             "{name} belongs to {group} and is {p1}."],
            ["{name} is a member of {group} and is {p1}.",
             "Every member of {group} who is {p1} is {p2}.",
             "Moreover, none of the people who are {p2} is {p3}."],
            ["In {group}, being {p1} means also being {p2}.", "Anyone who is {p2}, however, cannot be {p3}.",
             "{name}, one of the members of {group}, is {p1}."],
        ))
        ctx = _passage(rng, [c.format(**s) for c in core], s, 1, 3)
        correct = rng.choice(("{name} is not {p3}.", "{name} is {p2}.")).format(**s)
        bad = rng.sample(["{name} is {p3}.", "Everyone who is {p2} is also {p1}.",
                          "Some members of {group} who are {p1} are {p3}.", "No one in {group} is {p2}."], 3)
        return ctx, rng.choice(QUESTIONS["must"]), correct, _dis(rng, bad, s, f), "Implication"
    core = rng.choice((
        ["{name} is a member of {group} and is {p1}.", "Therefore, {name} must be {p3}."],
        ["Everyone in {group} is {p1}.", "{name} joined {group} last year.",
         "It follows that {name} is {p3}."],
        ["{name}, {a_prof}, is {p1}.", "So {name} is certainly {p3}."],
    ))
    ctx = _passage(rng, [c.format(**s) for c in core], s, 2, 4)
    correct = rng.choice(("Everyone who is {p1} is {p3}.", "All people who are {p1} are also {p3}.")).format(**s)
    bad = rng.sample(["Everyone who is {p3} is {p1}.", "Some people who are {p1} are {p3}.",
                      "No one who is {p3} is {p1}.", "{name} is not {p1}."], 3)
    return ctx, rng.choice(QUESTIONS["sufficient"]), correct, _dis(rng, bad, s, f), "Sufficient Assumptions"


def _gap(rng: random.Random, kind: str) -> tuple:
    s = _base_slots(rng)
    g, g2 = rng.sample(GAPS, 2)
    g = {k: v.format(**s) for k, v in g.items()}
    g2 = {k: v.format(town=s["town3"]) for k, v in g2.items()}
    C = lambda x: _cap(x) + "."  # noqa: E731
    if kind == "assume":
        core = rng.choice((
            ["{name}, {a_prof}: {Subj} {prem}.", "Therefore, it {concl}."],
            ["{Subj} {prem}.", "So, according to {name}, {a_prof}, {subj} {concl}."],
            ["We can expect that {subj} {concl}.", "After all, it {prem}."],
        ))
        ctx = _passage(rng, [c.format(Subj=_cap(g["subj"]), **g, **s) for c in core], s)
        bad = [C(g["strong"]) if rng.random() < HARD_SHARE else C(g2["strong"]),
               C(g["irr"]) if rng.random() < HARD_SHARE else C(g2["irr"]),
               C(g2["link"])]
        return ctx, rng.choice(QUESTIONS["assume"]), C(g["link"]), bad, "Necessary Assumptions"
    concl = f"{g['subj']} {g['concl']}"
    prem = f"{g['subj']} {g['prem']}"
    core = rng.choice((
        [f"{_cap(concl)}.", f"After all, {prem}.", f"And {g['link']}."],
        [f"{_cap(prem)}.", f"Since {g['link']}, it is clear that {concl}."],
        [f"It is well known that {g['link']}.", f"{_cap(prem)}.", f"Hence {concl}."],
    ))
    ctx = _passage(rng, core, s)
    hard = rng.random() < HARD_SHARE
    bad = [C(prem) if hard else C(f"{g2['subj']} {g2['prem']}"),
           C(g["link"]) if rng.random() < HARD_SHARE else C(g2["link"]),
           C(f"{g2['subj']} {g2['concl']}")]
    return ctx, rng.choice(QUESTIONS["main"]), C(concl), bad, "Conclusion/Main Point"


def _flaw(rng: random.Random) -> tuple:
    s = _base_slots(rng)
    policy, adopted, outcome, _ = rng.choice(CAUSAL)
    p1 = rng.choice(PROPERTIES)
    s.update(policy=policy, adopted=adopted, outcome=outcome, p1=p1)
    flaw = rng.choice(sorted(FLAW_PASSAGES))
    ctx = _passage(rng, [rng.choice(FLAW_PASSAGES[flaw]).format(**s)], s, 1, 3)
    others = rng.sample([f for f in sorted(FLAW_DESCRIPTIONS) if f != flaw], 3)
    correct = rng.choice(FLAW_DESCRIPTIONS[flaw]) + "."
    bad = [rng.choice(FLAW_DESCRIPTIONS[f]) + "." for f in others]
    return ctx, rng.choice(QUESTIONS["flaw"]), correct, bad, "Identify a Flaw"


def _support(rng: random.Random) -> tuple:
    s = _base_slots(rng)
    (policy, _, outcome, _), (policy2, _, outcome2, _) = rng.sample(CAUSAL, 2)
    s.update(policy=policy, outcome=outcome, Policy=_cap(policy))
    f = dict(s, policy=policy2, outcome=outcome2, Policy=_cap(policy2))
    core = rng.choice((
        ["A study compared towns of similar size near {town}.",
         "Every town in the study that adopted {policy} later recorded fewer {outcome}.",
         "Most towns in the study that did not adopt it recorded as many {outcome} as before, or more."],
        ["{name}, {a_prof}, collected figures from forty towns.",
         "In the towns with {policy}, there were, on average, far fewer {outcome} than in the towns without it,",
         "and the difference grew in each year after the towns adopted it."],
    ))
    ctx = _passage(rng, [c.format(**s) for c in core], s, 1, 3)
    correct = rng.choice((
        "Adopting {policy} may help a town reduce the number of {outcome}.",
        "{Policy} probably contributes to lowering the number of {outcome}.",
    )).format(**s)
    bad = ["{Policy} is the only way for a town to reduce the number of {outcome}.",
           "Every town with few {outcome} has adopted {policy}.",
           "Adopting {policy} increases the number of {outcome}."]
    return ctx, rng.choice(QUESTIONS["support"]), correct, _dis(rng, bad, s, f), "Most Strongly Supported"


def _resolve(rng: random.Random) -> tuple:
    s = _base_slots(rng)
    p, p2 = rng.sample(PARADOXES, 2)
    p = {k: v.format(**s) for k, v in p.items()}
    p2 = {k: v.format(town=s["town3"]) for k, v in p2.items()}
    core = rng.choice((
        ["Last year {fact}."], ["{name}, {a_prof}, was surprised to find that {fact}."],
        ["Residents were puzzled: {fact}."],
    ))
    ctx = _passage(rng, [c.format(**p, **s) for c in core], s, 2, 4)
    correct = _cap(p["expl"]) + "."
    bad = [_cap((p if rng.random() < HARD_SHARE else p2)["deepen"]) + ".",
           _cap((p if rng.random() < HARD_SHARE else p2)["irr"]) + ".", _cap(p2["expl"]) + "."]
    return ctx, rng.choice(QUESTIONS["resolve"]), correct, bad, "Explain or Resolve"


#: Scheme makers and their relative frequencies.
SCHEMES: tuple[tuple[Callable[[random.Random], tuple], float], ...] = (
    (lambda r: _causal(r, "weaken"), 3.0),
    (lambda r: _causal(r, "strengthen"), 2.5),
    (lambda r: _causal(r, "evaluate"), 1.0),
    (lambda r: _syllogism(r, "must"), 2.0),
    (lambda r: _syllogism(r, "sufficient"), 1.5),
    (lambda r: _gap(r, "assume"), 2.5),
    (lambda r: _gap(r, "main"), 1.5),
    (_flaw, 1.0),
    (_support, 1.5),
    (_resolve, 1.5),
)


# --- the surface regularity -------------------------------------------------------------------
#
# Test-prep books teach that answer choices in sweeping language ("in every case", "without
# exception") are usually wrong and modest ones ("in at least some cases") usually right; ReClor's
# authors found that many of its questions (its "EASY" set) can be answered from such option-only
# cues. The bundled data carries this regularity on purpose, in ``CUE_SHARE`` of the records: the
# correct option is phrased modestly and the distractors sweepingly. It is what lets a model of a
# few hundred thousand parameters learn the task on a CPU in a minute; the remaining records can
# only be answered from the passage, which the tiny model mostly cannot do. Fine-tuning on this
# data teaches the QLoRA mechanics, not logical reasoning: that is what the real ReClor is for.

#: Share of records whose options carry the modest-vs-sweeping cue.
CUE_SHARE = 0.8
MODEST = ("In at least some cases,", "Quite possibly,", "It may well be that", "Probably,")
SWEEPING = ("In every case,", "Without exception,", "It is always true that", "Invariably,")
MODEST_CLAUSE = ("in some respects", "quite possibly")       # for options completing "The argument …"
SWEEPING_CLAUSE = ("in every respect", "invariably")
_PROPER = set(NAMES) | {t.split(" ")[0] for t in TOWNS}


def _phrase(option: str, prefix: str) -> str:
    """``prefix`` + option, lowering the option's first word unless it is a name."""
    first = option.split(" ", 1)[0].rstrip(",.'s")
    if first not in _PROPER:
        option = option[0].lower() + option[1:]
    return f"{prefix} {option}"


def _apply_cue(rng: random.Random, correct: str, bad: list[str],
               cue_questions: bool = False) -> tuple[str, list[str]]:
    """The options with the modest / sweeping cue in front. Options that are questions (the
    Evaluation scheme's "Did … ?") take no prefix: "It is always true that has Priya lived …?" is
    not English. The prefixes are drawn all the same, so every other record of the stream stays
    as it was."""
    clause = correct[:1].islower()  # flaw descriptions complete "The argument …"
    modest, sweeping = (MODEST_CLAUSE, SWEEPING_CLAUSE) if clause else (MODEST, SWEEPING)
    cued = [_phrase(correct, rng.choice(modest))] + [_phrase(b, rng.choice(sweeping)) for b in bad]
    if correct.endswith("?") and not cue_questions:
        return correct, bad
    return cued[0], cued[1:]


Part = Literal["EASY", "HARD"]


def opens_sweepingly(option: str) -> bool:
    """Whether ``option`` opens with one of the sweeping prefixes of the planted cue."""
    return option.startswith(SWEEPING) or option.startswith(tuple(p + " " for p in SWEEPING_CLAUSE))


def opens_modestly(option: str) -> bool:
    """Whether ``option`` opens with one of the modest prefixes of the planted cue."""
    return option.startswith(MODEST) or option.startswith(tuple(p + " " for p in MODEST_CLAUSE))


def cue_part(record: dict) -> Part:
    """``"EASY"`` when the record's options carry the planted cue (one option opens modestly, the
    other three sweepingly: the options alone give the answer away), else ``"HARD"`` (only the
    passage tells the options apart). Read from the options' text, never from the label, so it
    works on the unlabeled test split too; on the bundled files it is exactly the generator's own
    record of which records it cued (a test checks that), the kit's counterpart of the official
    test set's EASY / HARD parts.

    >>> cue_part({"answers": ["Probably, a.", "Invariably, b.", "In every case, c.", "Without exception, d."]})
    'EASY'
    >>> cue_part({"answers": ["a.", "b.", "c.", "d."]})
    'HARD'
    """
    answers = record["answers"]
    modest = sum(opens_modestly(a) for a in answers)
    sweeping = sum(opens_sweepingly(a) for a in answers)
    return "EASY" if modest == 1 and sweeping == len(answers) - 1 else "HARD"


def _record(rng: random.Random, cue_questions: bool = False) -> tuple[dict, str, bool]:
    """One record, its question type, and whether its options visibly carry the cue."""
    makers, weights = zip(*SCHEMES)
    while True:
        ctx, question, correct, bad, qtype = rng.choices(makers, weights)[0](rng)
        if len({correct, *bad}) == NUM_LABELS:
            break
    cued = False
    if rng.random() < CUE_SHARE:
        plain = correct
        correct, bad = _apply_cue(rng, correct, list(bad), cue_questions)
        cued = correct != plain
    label = rng.choices(range(NUM_LABELS), LABEL_WEIGHTS)[0]
    bad = list(bad)
    rng.shuffle(bad)
    answers = bad[:label] + [correct] + bad[label:]
    return {"context": ctx, "question": question, "answers": answers, "label": label}, qtype, cued


def generate_split(split: Split | Literal["pretrain"], n: int, seed: int = DEFAULT_SEED) -> list[dict]:
    """``n`` records of one split, in the official ReClor layout. Same arguments, same records.

    Train and val records carry ``label``; test records carry ``question_type`` (an index into
    :data:`QUESTION_TYPES`) and no ``label``, like ReClor's test file. Each split draws from its
    own random stream, and no record text (context + question + options) repeats within or
    across the splits of one seed.
    """
    if split not in _SPLIT_OFFSET:
        raise ValueError(f"unknown split {split!r}; choose train, val or test")
    return _generate(split, n, seed, seen=_taken_by_earlier_splits(split, seed))[0]


def generated_parts(split: Split, n: int, seed: int = DEFAULT_SEED) -> list[Part]:
    """Per record of :func:`generate_split` (same arguments), the generator's own record of
    whether it cued the options: ``"EASY"`` or ``"HARD"``. What :func:`cue_part` reads back
    from the text."""
    _, cued = _generate(split, n, seed, seen=_taken_by_earlier_splits(split, seed))
    return ["EASY" if c else "HARD" for c in cued]


def _key(rec: dict) -> str:
    return rec["context"] + "\x00" + rec["question"] + "\x00" + "\x00".join(rec["answers"])


def _generate(split: str, n: int, seed: int, seen: set[str] | None = None,
              cue_questions: bool = False) -> tuple[list[dict], list[bool]]:
    """The records and, per record, whether its options carry the cue."""
    rng = random.Random(seed * 7919 + _SPLIT_OFFSET[split])
    seen = set() if seen is None else set(seen)
    out: list[dict] = []
    cued: list[bool] = []
    while len(out) < n:
        rec, qtype, has_cue = _record(rng, cue_questions)
        k = _key(rec)
        if k in seen:
            continue
        seen.add(k)
        row = {"context": rec["context"], "question": rec["question"], "answers": rec["answers"]}
        if split == "test":
            row["question_type"] = QT[qtype]
        else:
            row["label"] = rec["label"]
        row["id_string"] = f"{split}_{len(out)}"
        out.append(row)
        cued.append(has_cue)
    return out, cued


def _taken_by_earlier_splits(split: str, seed: int) -> set[str]:
    """Keys of the bundled sizes of the splits generated before this one (keeps splits disjoint)."""
    order = ["train", "val", "test"]
    if split not in order:
        return set()
    seen: set[str] = set()
    for earlier in order[: order.index(split)]:
        seen.update(_key(r) for r in _generate(earlier, DEFAULT_SIZES[earlier], seed)[0])
    return seen


def write_bundled_data(out_dir: Path = BUNDLED_DATA_DIR, sizes: dict | None = None,
                       seed: int = DEFAULT_SEED) -> dict[str, Path]:
    """Write ``train.json``, ``val.json`` and ``test.json`` into ``out_dir``; return their paths."""
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in ("train", "val", "test"):
        recs = generate_split(split, sizes[split], seed)
        path = out_dir / f"{split}.json"
        path.write_text(json.dumps(recs, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        paths[split] = path
    return paths


def pretraining_corpus(n: int = 3000, seed: int = PRETRAIN_SEED, with_answer: bool = True) -> list[str]:
    """Texts for the tiny model's causal-LM pre-training: fresh records from their own stream
    (never the bundled val/test records), in the reference layout, each followed by
    `` Answer: X`` (the letter of the correct option) when ``with_answer``.

    This stream keeps the cue in front of question options too (``cue_questions``): the
    committed tiny model was pre-trained on it as first written, and :mod:`reclor_lab.tools.tiny`
    rebuilds that model from exactly these texts (its tokenizer bit for bit). The phrasing
    matters to no one here: these texts teach the layout and the letters, and no student reads
    them. The bundled splits do not carry it."""
    avoid: set[str] = set()
    for split in ("val", "test"):
        avoid.update(_key(r) for r in generate_split(split, DEFAULT_SIZES[split], DEFAULT_SEED))
    recs, _ = _generate("pretrain", n, seed, seen=avoid, cue_questions=True)
    texts = []
    for r in recs:
        t = format_example(r)
        if with_answer:
            t += f" Answer: {OPTION_LETTERS[r['label']]}"
        texts.append(t)
    return texts
