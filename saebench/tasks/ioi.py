"""Indirect object identification (Wang et al. 2022, "Interpretability in the Wild", §2).

"When Mary and John went to the store, John gave a drink to" → " Mary". The indirect object
(IO) and the subject (S) are introduced, S is repeated, and the model should name the IO.
Half the pairs use ABBA templates (IO first), half BABA (S first), as in §2 of the paper.
Corrupt prompts are the "ABC" distribution of §3.1: the repeated subject is replaced by a
third name, so nothing singles out the IO. Metric: logit[IO] − logit[S] at the last token;
a pair is correct when it is positive.
"""

from __future__ import annotations

from collections.abc import Callable

from saebench.tasks.base import (
    LogitDiffTask,
    TaskBatch,
    TaskUnavailable,
    encode_pairs,
    need,
    rng,
    single_tokens,
)

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

    def template_batches(self, tokenizer, n: int, seed: int) -> list[tuple[TaskBatch, tuple]]:
        """The pairs grouped by template, each group's prompts token-aligned, with the role
        of every position: (batch, roles) per template. See `template_groups`."""
        return template_groups(tokenizer, n, seed)


def _roles(tokens: list[str], ids: list[int], slots: dict[str, int], n_fixed: dict) -> tuple:
    """Role of each position: BOS, A, B, S2, place, obj, end (the metric position), or the
    fixed word itself ("went", "to'2" for its second use in the template).

    Naming fixed words by their text, not their index, is our choice: it lets a node such as
    latent@and mean the same thing in every template (Marks et al. 2024, §4, align positions
    within one template only)."""
    out, seen = ["BOS"], {}
    for i, (text, tok) in enumerate(zip(tokens, ids, strict=True)):
        seen[tok] = seen.get(tok, 0) + 1
        if i == len(ids) - 1:
            out.append("end")
        elif tok == slots["place"]:
            out.append("place")
        elif tok == slots["obj"]:
            out.append("obj")
        elif tok in (slots["A"], slots["B"]) and seen[tok] == 1:
            out.append("A" if tok == slots["A"] else "B")
        elif tok == slots["S"]:
            out.append("S2")
        else:
            word = text.strip() or repr(text)
            n_fixed[word] = n_fixed.get(word, 0) + 1
            out.append(word if n_fixed[word] == 1 else f"{word}'{n_fixed[word]}")
    return tuple(out)


def template_groups(tokenizer, n: int, seed: int,
                    edit: Callable[[tuple], tuple] | None = None) -> list[tuple[TaskBatch, tuple]]:
    """`n` pairs split evenly over the templates, ABBA and BABA alternating within each; every
    filler is one token, so all prompts of a template have one length and one role per
    position (what per-position circuits need, Marks et al. 2024, §4).

    `edit` maps each pair's draw (io, s, c, place, obj) to the one used, after the seed's
    draw: e.g. the same pairs with other names (benchmarks/mask_names_check.py)."""
    ids = single_tokens(tokenizer, NAMES)
    names = need(ids, 3, "ioi", "names")
    places = need(single_tokens(tokenizer, PLACES), 1, "ioi", "places")
    objects = need(single_tokens(tokenizer, OBJECTS), 1, "ioi", "objects")
    place_ids, obj_ids = single_tokens(tokenizer, places), single_tokens(tokenizer, objects)
    r = rng(seed, "ioi-templates")
    out = []
    for t, template in enumerate(TEMPLATES):
        size = n // len(TEMPLATES) + (t < n % len(TEMPLATES))
        if size == 0:
            continue
        clean, corrupt, answer, wrong, roles = [], [], [], [], set()
        for i in range(size):
            io, s, c = r.sample(names, 3)
            place, obj = r.choice(places), r.choice(objects)
            if edit is not None:
                io, s, c, place, obj = edit((io, s, c, place, obj))
            a, b = (io, s) if i % 2 == 0 else (s, io)
            fill = dict(A=a, B=b, place=place, obj=obj)
            clean.append(template.format(S=s, **fill))
            corrupt.append(template.format(S=c, **fill))
            answer.append(ids[io])
            wrong.append(ids[s])
            toks = tokenizer(clean[-1], add_special_tokens=False)["input_ids"]
            slots = {"A": ids[a], "B": ids[b], "S": ids[s], "place": place_ids[place],
                     "obj": obj_ids[obj]}
            roles.add(_roles([tokenizer.decode([x]) for x in toks], toks, slots, {}))
        if len(roles) != 1:
            raise TaskUnavailable(f"template {t} does not tokenize to one role per position")
        batch = encode_pairs(tokenizer, clean, corrupt, answer, wrong)
        if int(batch.pos.min()) != int(batch.pos.max()):
            raise TaskUnavailable(f"template {t}: prompts of different token lengths")
        out.append((batch, roles.pop()))
    return out
