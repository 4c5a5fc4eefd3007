"""Subject–verb agreement (Finlayson et al. 2021; the templates of Marks et al. 2024, §4).

Three structures, in turn: simple ("The keys" → " are"), across a prepositional phrase
("The keys near the cabinet" → " are") and across an object relative clause ("The keys that
the guard likes" → " are"). The attractor noun inside the phrase or clause has a random number,
so half the prompts carry a distractor. Corrupt prompts flip the subject's number only.
Metric: logit[verb form agreeing with the clean subject] − logit[the other form], for one verb
pair per prompt (is/are, was/were, has/have); correct when positive.
"""

from __future__ import annotations

from saebench.tasks.base import (
    LogitDiffTask,
    TaskBatch,
    TaskUnavailable,
    encode_pairs,
    need,
    rng,
    single_tokens,
)

NOUNS = {
    "key": "keys", "dog": "dogs", "author": "authors", "teacher": "teachers",
    "doctor": "doctors", "student": "students", "manager": "managers", "friend": "friends",
    "farmer": "farmers", "pilot": "pilots", "officer": "officers", "child": "children",
    "woman": "women", "man": "men", "guard": "guards", "athlete": "athletes",
    "customer": "customers", "worker": "workers", "lawyer": "lawyers", "driver": "drivers",
    "nurse": "nurses", "king": "kings", "girl": "girls", "boy": "boys",
}  # fmt: skip
PREPOSITIONS = ("near", "behind", "beside", "with", "from")
# Relative-clause verbs, (singular, plural): they agree with the attractor, not the subject.
RC_VERBS = (("likes", "like"), ("knows", "know"), ("sees", "see"), ("loves", "love"))
VERBS = (("is", "are"), ("was", "were"), ("has", "have"))
STRUCTURES = ("simple", "pp", "rc")


def _prompt(structure: str, subject: str, attractor: str, rc_verb: str, prep: str) -> str:
    if structure == "simple":
        return f"The {subject}"
    if structure == "pp":
        return f"The {subject} {prep} the {attractor}"
    return f"The {subject} that the {attractor} {rc_verb}"


class SVA(LogitDiffTask):
    name = "sva"
    summary = "subject–verb agreement, simple / across a PP / across a relative clause"

    def batch(self, tokenizer, n: int, seed: int) -> TaskBatch:
        sing, plur = single_tokens(tokenizer, list(NOUNS)), single_tokens(tokenizer, NOUNS.values())
        nouns = need({s: 0 for s in sing if NOUNS[s] in plur}, 2, self.name, "noun pairs")
        verbs = single_tokens(tokenizer, [v for pair in VERBS for v in pair])
        if len(verbs) < 2 * len(VERBS):
            raise TaskUnavailable(f"task '{self.name}': verb forms are not single tokens")
        r = rng(seed, self.name)
        clean, corrupt, answer, wrong = [], [], [], []
        for i in range(n):
            structure = STRUCTURES[i % len(STRUCTURES)]
            noun, other = r.sample(nouns, 2)
            plural, other_plural = r.random() < 0.5, r.random() < 0.5
            attractor = NOUNS[other] if other_plural else other
            rc_verb = r.choice(RC_VERBS)[1 if other_plural else 0]
            prep = r.choice(PREPOSITIONS)
            forms = (noun, NOUNS[noun])
            clean.append(_prompt(structure, forms[plural], attractor, rc_verb, prep))
            corrupt.append(_prompt(structure, forms[not plural], attractor, rc_verb, prep))
            verb = r.choice(VERBS)
            answer.append(verbs[verb[plural]])
            wrong.append(verbs[verb[not plural]])
        return encode_pairs(tokenizer, clean, corrupt, answer, wrong)
