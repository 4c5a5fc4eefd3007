"""Indirect object identification (Wang et al. 2022, "Interpretability in the Wild", §2).

"When Mary and John went to the store, John gave a drink to" → " Mary". The indirect object
(IO) and the subject (S) are introduced, S is repeated, and the model should name the IO.
Half the pairs use ABBA templates (IO first), half BABA (S first), as in §2 of the paper.
Corrupt prompts are the "ABC" distribution of §3.1: the repeated subject is replaced by a
third name, so nothing singles out the IO. Metric: logit[IO] − logit[S] at the last token;
a pair is correct when it is positive.
"""

from __future__ import annotations

from saebench.tasks.base import LogitDiffTask, TaskBatch, encode_pairs, need, rng, single_tokens

NAMES = (
    "Mary John Tom James Anna Sarah Michael David Lisa Emma Paul Mark Kate Jack Alice Bob "
    "Susan Peter Laura Dan Sam Ben Rose Amy Jane Eric Max Tim Ryan Adam Kevin Jason Steve "
    "Linda Helen George Henry Frank Karen Nancy"
).split()
PLACES = ("store", "park", "school", "station", "garden", "hospital", "office", "restaurant")
OBJECTS = ("drink", "book", "ring", "letter", "bone", "kiss", "snack", "necklace", "basketball")

# {A} is introduced first, {B} second; in ABBA the IO is A, in BABA the IO is B.
TEMPLATES = (
    "When {A} and {B} went to the {place}, {S} gave a {obj} to",
    "Then, {A} and {B} went to the {place}. {S} gave a {obj} to",
    "After {A} and {B} arrived at the {place}, {S} handed a {obj} to",
    "While {A} and {B} were working at the {place}, {S} gave a {obj} to",
    "When {A} and {B} got a {obj} at the {place}, {S} decided to give it to",
    "After the lunch, {A} and {B} went to the {place}. {S} gave a {obj} to",
    "While {A} and {B} were commuting to the {place}, {S} gave a {obj} to",
    "Then, {A} and {B} had a lot of fun at the {place}. {S} gave a {obj} to",
)  # each ≥ 15/16 correct on SmolLM2-135M; weaker templates were dropped


class IOI(LogitDiffTask):
    name = "ioi"
    summary = "name the indirect object: 'When Mary and John went…, John gave a drink to' → Mary"

    def batch(self, tokenizer, n: int, seed: int) -> TaskBatch:
        ids = single_tokens(tokenizer, NAMES)
        names = need(ids, 3, self.name, "names")
        r = rng(seed, self.name)
        clean, corrupt, answer, wrong = [], [], [], []
        for i in range(n):
            io, s, c = r.sample(names, 3)
            template = r.choice(TEMPLATES)
            place, obj = r.choice(PLACES), r.choice(OBJECTS)
            a, b = (io, s) if i % 2 == 0 else (s, io)  # alternate ABBA and BABA
            fill = dict(A=a, B=b, place=place, obj=obj)
            clean.append(template.format(S=s, **fill))
            corrupt.append(template.format(S=c, **fill))
            answer.append(ids[io])
            wrong.append(ids[s])
        return encode_pairs(tokenizer, clean, corrupt, answer, wrong)
