"""Texts labelled with two binary attributes, for spurious correlation removal (SCR), offline.

SCR (Karvonen et al. 2024, arXiv 2411.18895, section 3; SAEBench, arXiv 2503.09532) needs
texts that carry two attributes which the eval can confound on purpose: Bias in Bios
(profession x gender) and Amazon reviews (category x rating) in SAEBench. Neither is offline,
so these stand in (DESIGN.md section 7; research/anchors_round2.md, SCR):
- `amazon_yelp_x_sentiment`: review site x sentiment, from the sae-probes wheel's
  157_amazon_5star (5 vs 1 stars) and 111_yelp_data (stars 4 vs 0). Both are long reviews,
  so length does not give the site away (the Amazon "Title:" header does, like a category);
- `wikidata_arts_public_x_gender`: occupation x gender, the Bias in Bios analogue. Passages
  are the positives of the wheel's wikidata occupation sets, pooled into arts (actor, singer)
  and public life (politician, journalist): a single occupation has only ~50 women. Gender is
  read from pronouns, the rule Bias in Bios used (De-Arteaga et al. 2019, arXiv 1901.09451):
  he/him/his/himself and no female pronoun is male, and the reverse female; the rest is
  dropped;
- `emma_mansfieldpark_x_dialogue`: corpus-only (no wheel), for CI: Austen novel x whether
  the passage holds quoted speech.

Attribute `a` plays SAEBench's first column (profession, category) and `b` its second
(gender, rating). A row's label is "<a value>|<b value>", so the eval-store machinery, which
keeps one label per text, holds both.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from store import probe_datasets
from store.errors import AptUnavailable, UserError
from store.probe_datasets import ProbeSet

SEP = "|"
_MALE = re.compile(r"\b(he|him|his|himself)\b", re.IGNORECASE)
_FEMALE = re.compile(r"\b(she|her|hers|herself)\b", re.IGNORECASE)


@dataclass(frozen=True)
class ScrSpec:
    """One two-attribute set: which attribute values, and whether it needs the wheel."""

    name: str
    a: str
    """The first attribute's name (SAEBench's profession / category), e.g. 'domain'."""
    a_values: tuple[str, str]
    b: str
    """The second attribute's name (SAEBench's gender / rating), e.g. 'sentiment'."""
    b_values: tuple[str, str]
    needs_wheel: bool


Rows = list[tuple[str, str, str]]  # (text, a value, b value)


def pronoun_gender(text: str) -> str | None:
    """'male' or 'female' when the text's pronouns are all of one gender, else None."""
    male, female = len(_MALE.findall(text)), len(_FEMALE.findall(text))
    if male and not female:
        return "male"
    if female and not male:
        return "female"
    return None


def _positives(name: str) -> list[str]:
    texts, labels = probe_datasets.load_sae_probes(name)
    return [t for t, lab in zip(texts, labels, strict=True) if lab == "1"]


def _amazon_yelp() -> Rows:
    rows = []
    for site, name, polarity in (("amazon", "157_amazon_5star", {"1": "positive", "0": "negative"}),
                                 ("yelp", "111_yelp_data", {"4": "positive", "0": "negative"})):
        texts, labels = probe_datasets.load_sae_probes(name)
        rows += [(t, site, polarity[lab]) for t, lab in zip(texts, labels, strict=True)
                 if lab in polarity]
    return rows


_OCCUPATIONS = {
    "arts": ("61_wikidata_occupation_isactor", "63_wikidata_occupation_issinger"),
    "public": ("62_wikidata_occupation_ispolitician", "59_wikidata_occupation_isjournalist"),
}


def _wikidata_gender() -> Rows:
    rows = []
    for group, names in _OCCUPATIONS.items():
        for name in names:
            for text in _positives(name):
                gender = pronoun_gender(text)
                if gender is not None:
                    rows.append((text, group, gender))
    return rows


def _austen_dialogue() -> Rows:
    texts, labels = probe_datasets.load_corpus_set("austen_book")
    return [(t, book, "dialogue" if '"' in t else "narration")
            for t, book in zip(texts, labels, strict=True) if book in ("emma", "mansfieldpark")]


SCR_SETS: dict[str, tuple[ScrSpec, Callable[[], Rows]]] = {
    "amazon_yelp_x_sentiment": (ScrSpec("amazon_yelp_x_sentiment", "domain", ("amazon", "yelp"),
                                        "sentiment", ("positive", "negative"), True), _amazon_yelp),
    "wikidata_arts_public_x_gender": (
        ScrSpec("wikidata_arts_public_x_gender", "occupation", ("arts", "public"), "gender",
                ("male", "female"), True), _wikidata_gender),
    "emma_mansfieldpark_x_dialogue": (
        ScrSpec("emma_mansfieldpark_x_dialogue", "novel", ("emma", "mansfieldpark"), "speech",
                ("dialogue", "narration"), False), _austen_dialogue),
}


def spec(name: str) -> ScrSpec:
    if name not in SCR_SETS:
        raise UserError(f"unknown SCR dataset '{name}'; available: {', '.join(SCR_SETS)}")
    return SCR_SETS[name][0]


def split_label(label: str) -> tuple[str, str]:
    """'yelp|positive' -> ('yelp', 'positive')."""
    a, b = label.split(SEP)
    return a, b


def scr_set(name: str, n_train: int, n_test: int, seed: int = 42) -> ProbeSet:
    """Equal numbers of texts in each of the four (a, b) quadrants, each split train:test alike.

    Balanced quadrants make the test set unconfounded for both attributes, and let the eval
    cut the perfectly confounded train subset (SAEBench's biased set) from the same rows."""
    s, load = SCR_SETS[spec(name).name]
    try:
        rows = load()
    except AptUnavailable as exc:
        raise UserError(f"SCR dataset {name} needs its corpus: {exc}") from None
    seen: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for text, a, b in rows:
        seen[text].add((a, b))
    quadrants: dict[tuple[str, str], list[str]] = defaultdict(list)
    for text, labels in seen.items():  # a text seen with two labels is dropped, not guessed
        if len(labels) == 1:
            quadrants[next(iter(labels))].append(text)
    keys = [(a, b) for a in s.a_values for b in s.b_values]
    per = min([len(quadrants[k]) for k in keys] + [(n_train + n_test) // 4])
    if per < 2:
        raise UserError(f"SCR dataset {name}: a quadrant has fewer than 2 texts")
    n_tr = max(1, min(per - 1, round(per * n_train / (n_train + n_test))))
    rng = random.Random(seed)
    texts, labels, splits = [], [], []
    for key in keys:
        pool = sorted(quadrants[key])
        rng.shuffle(pool)
        texts += pool[:per]
        labels += [SEP.join(key)] * per
        splits += ["train"] * n_tr + ["test"] * (per - n_tr)
    return ProbeSet(name, texts, labels, splits)
