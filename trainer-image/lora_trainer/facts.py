"""The checkable facts of a text, and how an answer stands to a reference's facts.

Why this exists: overlap scores (token F1, ROUGE) reward wording. A copy of the reference with every
number wrong overlaps it almost entirely; a correct paraphrase, or numbers written in words, overlap
it little. So the builtin grader (grader.py) reads facts instead: numbers (digits or words, with
their value), named entities (capitalised names, code and paths) and key terms of the reference,
and for each one decides whether the answer *supports* it (states it, asserted), *contradicts* it
(states another value in its place, denies it, or offers it among wrong alternatives) or leaves it
*missing*. docs/grading.md has every rule and the figures that justify them.

Everything here is pure, deterministic and offline; no word lists beyond the small ones below.
"""

from __future__ import annotations

import bisect
import difflib
import itertools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from lora_trainer.text import STOPWORDS, stem

# ------------------------------------------------------------------------------------------ numbers

_UNITS = {w: i for i, w in enumerate((
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"))}
_TENS = {w: 10 * i for i, w in enumerate(
    ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")) if i > 1}
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000,
           "trillion": 1_000_000_000_000}
_ORDINALS = {w: i for i, w in enumerate((
    "", "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth", "eleventh",
    "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth", "eighteenth", "nineteenth"))
    if i}
_ORDINALS |= {"twentieth": 20, "thirtieth": 30}
_MULTIPLIERS = {f"{w}{end}": n for w, n in (("double", 2), ("triple", 3), ("quadruple", 4))
                for end in ("", "s", "d")} | {"twice": 2, "thrice": 3, "doubling": 2, "tripling": 3}
_DERIVATIONS = ("ation", "ition", "ion", "ity", "ness", "ment", "ive", "ic")
_MONTHS = frozenset(("january", "february", "march", "april", "may", "june", "july", "august", "september",
                     "october", "november", "december"))
# Unit spellings that name the same unit, so "6,650 km" and "6,650 kilometres" share a slot.
_UNIT_ALIASES = {"km": "kilometre", "kilometer": "kilometre", "kms": "kilometre", "m": "metre", "meter": "metre",
                 "cm": "centimetre", "mm": "millimetre", "kg": "kilogram", "g": "gram", "mi": "mile",
                 "lb": "pound", "lbs": "pound", "h": "hour", "hr": "hour", "hrs": "hour", "min": "minute",
                 "mins": "minute", "sec": "second", "secs": "second", "s": "second", "yr": "year", "yrs": "year",
                 "%": "percent", "pct": "percent", "c": "celsius", "f": "fahrenheit", "gb": "gigabyte",
                 "mb": "megabyte"}

# ------------------------------------------------------------------------------ negation and hedging

# A clause with one of these denies what it says ("X is not Y", "X never Z", "none of ...").
_CLAUSE_NEGATORS = frozenset({"not", "never", "nowhere", "neither", "nor", "none", "nobody", "cannot",
                              "false", "untrue", "myth", "incorrect"})
# "either ... or not at all", "whether or not", "not only ... but": a "not" that denies nothing.
_IDLE_NOT = (("or", "not"), ("not", "only"), ("not", "just"), ("not", "merely"))
# "no" negates what follows it in its phrase ("has no ranks"), not the whole clause ("starts at 4,000 XP and
# has no upper limit" keeps its 4,000).
_PHRASE_NEGATORS = frozenset({"no"})
_PHRASE_SCOPE = 3
APPROXIMATE = 0.05  # a rounded number within 5% of the reference's, said to be approximate, states it
_APPROXIMATELY = frozenset({"about", "around", "roughly", "nearly", "almost", "approximately", "some", "circa", "over",
                            "under", "close", "approx"})
SLOT_WIDTH = 3  # content words either side of a fact that make its slot
HEDGE_DISTANCE = 6  # tokens between a fact and a rival value offered beside it
LIST_ITEM_TOKENS = 3  # a list item is a segment of at most this many tokens
STUFFED_ITEMS = 3  # wrong items a list needs before its right ones count as buried
NEAR_COPY = 0.75  # difflib similarity above which an answer is read as an edited copy of the reference
VERBATIM_COPY = 0.85  # above it, a swapped word (not only a number or name) is a deliberate change too
SWAP_TOKENS = 3  # the longest edit of such a copy read as a swapped fact
# Words that offer alternatives or doubt; with a competing value nearby they make a fact a guess.
_HEDGES = frozenset({"or", "maybe", "perhaps", "possibly", "probably", "either", "somewhere", "between", "whichever",
                     "unsure", "unclear", "guess", "some", "any", "might", "could"})
# Clause boundaries for negation scope (inside a sentence).
_CLAUSE_BREAK = re.compile(r",\s+(?:and|but|yet)\b|\s+(?:but|while|whereas|although|though|however|yet|so|"
                           r"because|since|unless|until|when|where|which|who|if)\s+|,\s+which\b|,\s+so\b",
                           re.IGNORECASE)
# Sentence (and hedge/list scope) boundaries: end punctuation, semicolons, colons, new lines.
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")
_PART_BREAK = re.compile(r";+|:\s+")  # a sentence's parts, each its own scope for lists and negation
_SEGMENT_BREAK = re.compile(r",(?!\d{3}\b)\s*|\s+(?:or|and|then|nor)\s+|\(|\)", re.IGNORECASE)

# Tokens: a path or dotted/code name, a number in digits (thousands separators, decimals, a sign, an
# ordinal suffix), a percent sign, or a word of letters (any script) with an inner apostrophe.
_TOKEN = re.compile(
    r"(?P<num>(?<![\w)])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?:st|nd|rd|th)?\b|\d+(?:\.\d+)?(?:st|nd|rd|th)?\b)"
    r"|(?P<code>~?[\w.-]*/[\w./~-]*[\w~]|[^\W\d_]\w*(?:\.\w+)*\.[^\W\d_]\w+\(?)"
    r"|(?P<pct>%)"
    r"|(?P<word>[^\W\d_]+(?:['\u2019][^\W\d_]+)?)"
)


def fold(text: str) -> str:
    """Lower case without accents: "Béchamel" and "bechamel" are one word to the grader."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


class Kind(Enum):
    NUMBER = "number"
    ENTITY = "entity"
    TERM = "term"


@dataclass
class Token:
    text: str
    key: str  # folded stem (words), folded text (code), canonical value (numbers)
    kind: Kind | None  # None: a function word or a word that is no fact
    value: float | None
    sentence: int
    clause: int
    segment: int
    negated: bool = False
    full_sentence: int = 0  # sentence number; ``sentence`` counts its parts (split at ";" and ":") too
    unit: bool = False  # a unit of measure ("km", "%"): part of a number's slot however short
    capitalised: bool = False
    initial: bool = False


@dataclass
class Text:
    """A text as the grader reads it: tokens with their sentence, clause and list segment."""

    tokens: list[Token]
    segments: dict[tuple[int, int], list[Token]] = field(default_factory=dict)

    def stems(self) -> list[str]:
        return [t.key for t in self.tokens]

    def keys(self) -> set[str]:
        return {t.key for t in self.tokens}


def _number_key(value: float) -> str:
    return f"{value:.6g}" if value != int(value) else str(int(value))


def _word_number_runs(words: Sequence[str], comma_before: Sequence[bool]) -> list[tuple[int, int, float]]:
    """(start, end, value) of each run of number words: "four thousand one hundred and thirty" = 4130,
    "fifteen hundred" = 1500, "sixty-four forty-three" = 6443 and "nineteen eighty-four" = 1984 (read like
    a year), "fifteenth" next to a month = 15. "two, five and eight" are three numbers: a comma or "and"
    continues a number only after a scale word, and two single digits in a row never make one. A lone
    "one" is a pronoun far more often than a number and is skipped."""
    runs: list[tuple[int, int, float]] = []
    i = 0
    while i < len(words):
        w = words[i]
        if w in _ORDINALS and any(m in _MONTHS for m in words[max(0, i - 2): i + 3]):
            runs.append((i, i + 1, float(_ORDINALS[w])))
            i += 1
            continue
        if w not in _UNITS and w not in _TENS:
            i += 1
            continue
        start, total, current, j = i, 0, 0, i
        while j < len(words):
            w, after_scale = words[j], j > start and words[j - 1] in _SCALES
            if j > start and comma_before[j] and not after_scale:
                break
            if w == "and" and after_scale and j + 1 < len(words) and (
                    words[j + 1] in _UNITS or words[j + 1] in _TENS):
                j += 1
                continue
            if w in ("oh", "o") and j > start and current % 100 and j + 1 < len(words) and words[j + 1] in _UNITS:
                current = current * 100 + _UNITS[words[j + 1]]  # "nineteen oh three"
                j += 2
                continue
            if w == "point" and j > start and j + 1 < len(words) and words[j + 1] in _UNITS:
                digits = ""
                j += 1
                while j < len(words) and words[j] in _UNITS and _UNITS[words[j]] < 10:
                    digits += str(_UNITS[words[j]])
                    j += 1
                runs.append((start, j, total + current + float("0." + digits)))
                start = -1
                break
            if w in _UNITS or w in _TENS:
                small = _UNITS.get(w, _TENS.get(w, 0))
                if j > start and small < 10 and current % 10:
                    break  # "two five": two numbers
                if current % 100 and (w in _TENS or small >= 10):
                    current = current * 100 + small  # "nineteen eighty", "sixty-four forty-three"
                else:
                    current += small
            elif w == "hundred" and j > start:
                current = (current or 1) * 100
            elif w in _SCALES and j > start:
                total += (current or 1) * _SCALES[w]
                current = 0
            else:
                break
            j += 1
        if start >= 0 and not (j - start == 1 and words[start] == "one"):
            runs.append((start, j, float(total + current)))
        i = j
    return runs


def word_key(word: str) -> str:
    """The grader's stem: ``text.stem`` (inflections) and then one derivational suffix, so "refraction",
    "refracted" and "refracts" meet, as do "atomicity" and "atomic"; at least four letters stay."""
    key = stem(word)
    for suffix in _DERIVATIONS:
        if key.endswith(suffix) and len(key) - len(suffix) >= 4:
            return key[: -len(suffix)]
    return key


def _split(pattern: re.Pattern[str], text: str) -> list[str]:
    return [p for p in pattern.split(text) if p and p.strip()]


def read(text: str) -> Text:
    """Tokenise ``text`` into sentences, clauses and list segments, mark negated tokens, read numbers
    (digits and words) and classify each token as number, entity, term or nothing."""
    tokens: list[Token] = []
    segments: dict[tuple[int, int], list[Token]] = {}
    segment_base = s = 0
    parts = [(n, part) for n, sentence in enumerate(_split(_SENTENCE_BREAK, text))
             for part in _split(_PART_BREAK, sentence)]
    for s, (full, part) in enumerate(parts):
        for c, clause in enumerate(_split(_CLAUSE_BREAK, part)):
            breaks = [m.start() for m in _SEGMENT_BREAK.finditer(clause)]
            clause_tokens = _tokens(clause, s, c, segment_base, breaks)
            for t in clause_tokens:
                t.full_sentence = full
            for t in clause_tokens:
                segments.setdefault((s, t.segment), []).append(t)
            segment_base += len(breaks) + 1
            _mark_negation(clause_tokens)
            tokens += clause_tokens
    if tokens:
        tokens[0].initial = True
    for previous, token in itertools.pairwise(tokens):
        token.initial = token.sentence != previous.sentence
    return Text(tokens, segments)


def _tokens(clause: str, sentence: int, clause_no: int, segment_base: int, breaks: Sequence[int]) -> list[Token]:
    found = list(_TOKEN.finditer(clause))
    words = [fold(m.group()) if m.lastgroup == "word" else "" for m in found]
    comma_before = [i > 0 and "," in clause[found[i - 1].end():m.start()] for i, m in enumerate(found)]
    numbers_from_words = {start: (end, value) for start, end, value in _word_number_runs(words, comma_before)}
    out: list[Token] = []

    def add(raw: str, key: str, kind: Kind | None, value: float | None, at: int, **flags: bool) -> None:
        segment = segment_base + bisect.bisect_right(breaks, at)
        out.append(Token(raw, key, kind, value, sentence, clause_no, segment, **flags))

    i = 0
    while i < len(found):
        m = found[i]
        group, raw = m.lastgroup, m.group()
        if i in numbers_from_words:
            end, value = numbers_from_words[i]
            add(clause[m.start():found[end - 1].end()], _number_key(value), Kind.NUMBER, value, m.start())
            i = end
            continue
        if group == "num":
            value = float(re.sub(r"(st|nd|rd|th)$", "", raw).replace(",", ""))
            scale = words[i + 1] if i + 1 < len(found) else ""
            if scale in _SCALES and scale != "hundred":  # "9 million"
                value *= _SCALES[scale]
                i += 1
            add(raw, _number_key(value), Kind.NUMBER, value, m.start())
        elif group == "pct":
            add(raw, "percent", None, None, m.start(), unit=True)
        elif group == "code":
            add(raw, fold(raw.rstrip("(")), Kind.ENTITY, None, m.start())
        elif words[i] == "per" and i + 1 < len(found) and words[i + 1] == "cent":
            add("per cent", "percent", None, None, m.start(), unit=True)
            i += 1
        else:
            word = words[i]
            capitalised = raw[0].isupper()
            content = word not in STOPWORDS and (len(word) >= 3 or capitalised or word in _UNIT_ALIASES)
            if word in _MULTIPLIERS:  # "doubles" vs "triples" is a number fact, not wording
                add(raw, f"x{_MULTIPLIERS[word]}", Kind.NUMBER, float(_MULTIPLIERS[word]), m.start())
            else:
                word = re.sub(r"['\u2019]s$", "", word)  # "Russia's" names Russia
                add(raw, word_key(_UNIT_ALIASES.get(word, word)), Kind.TERM if content else None, None, m.start(),
                    capitalised=capitalised, unit=word in _UNIT_ALIASES)
        i += 1
    return out


def _mark_negation(clause: list[Token]) -> None:
    """A clause negator ("not", "never", "n't") negates its whole clause; "no" the three words after it
    ("has no upper limit", "no free man")."""
    lowered = [fold(t.text) for t in clause]
    idle = {i + k for i, pair in enumerate(itertools.pairwise(lowered)) if pair in _IDLE_NOT
            for k in (0, 1) if lowered[i + k] == "not"}
    if any((w in _CLAUSE_NEGATORS and i not in idle) or w.endswith(("n't", "n\u2019t"))
           for i, w in enumerate(lowered)):
        for t in clause:
            t.negated = True
        return
    for i, w in enumerate(lowered):
        if w in _PHRASE_NEGATORS:
            for t in clause[i + 1:i + 1 + _PHRASE_SCOPE]:
                t.negated = True


def _is_entity(token: Token, capitalised_elsewhere: set[str]) -> bool:
    """A capitalised content word, unless it only starts a sentence (then it must be capitalised elsewhere
    too: "Measured from ..." is no name); a word with two capitals (HTTPS, StatefulSet) always is."""
    if token.kind is not Kind.TERM or not token.capitalised:
        return False
    capitals = sum(c.isupper() for c in token.text)
    return capitals >= 2 or not token.initial or token.key in capitalised_elsewhere


def classify_entities(texts: Iterable[Text]) -> None:
    """Turn capitalised terms into entities, with what the texts say about which words are names."""
    texts = list(texts)
    elsewhere = {t.key for x in texts for t in x.tokens if t.capitalised and not t.initial}
    for x in texts:
        for t in x.tokens:
            if _is_entity(t, elsewhere):
                t.kind = Kind.ENTITY


# ------------------------------------------------------------------------------------------ checking

WEIGHTS = {Kind.NUMBER: 2.0, Kind.ENTITY: 2.0, Kind.TERM: 1.0}
KEYWORD_WEIGHT = 1.0


class Verdict(Enum):
    SUPPORTED = "supported"
    CONTRADICTED = "contradicted"
    MISSING = "missing"


@dataclass(frozen=True)
class Check:
    fact: Token
    verdict: Verdict
    why: str
    core: bool  # in the reference's first sentence: the direct answer
    keyword: bool = False  # an expected keyword: all weigh the same

    @property
    def weight(self) -> float:
        if self.keyword:
            return KEYWORD_WEIGHT
        return WEIGHTS[self.fact.kind] if self.fact.kind else 0.0


def _window(text: Text, index: int, width: int = SLOT_WIDTH) -> set[str]:
    """The fact's "slot": the ``width`` nearest words either side in its sentence that are content (terms,
    names, units; numbers and function words skipped), as keys."""
    me = text.tokens[index]
    sentence = [i for i, t in enumerate(text.tokens) if t.sentence == me.sentence and i != index
                and (t.kind in (Kind.TERM, Kind.ENTITY) or t.unit)]
    before = [i for i in sentence if i < index][-width:]
    after = [i for i in sentence if i > index][:width]
    return {text.tokens[i].key for i in before + after}


def _hedged(answer: Text, index: int, rivals: set[int]) -> bool:
    """A mention offered among competing values: a rival (a wrong value of the same kind) within
    ``HEDGE_DISTANCE`` tokens in the same clause, and a word of doubt or choice ("or", "maybe", "between")
    in that clause: "the Nile, the Congo or the Niger", "between 2,500 and 6,650 km"."""
    me = answer.tokens[index]
    clause = [t for t in answer.tokens if (t.sentence, t.clause) == (me.sentence, me.clause)]
    near = [i for i in rivals if abs(i - index) <= HEDGE_DISTANCE and answer.tokens[i].kind == me.kind
            and (answer.tokens[i].sentence, answer.tokens[i].clause) == (me.sentence, me.clause)
            and _same_unit(answer, i, index)]
    return bool(near) and any(fold(t.text) in _HEDGES for t in clause)


def _same_unit(text: Text, i: int, j: int) -> bool:
    """Numbers in different units are conversions ("300,000 km/s or 186,000 miles/s"), not rivals."""
    def unit(k: int) -> str | None:
        after = text.tokens[k + 1] if k + 1 < len(text.tokens) else None
        return after.key if after is not None and after.sentence == text.tokens[k].sentence and (
            after.unit or after.kind in (Kind.TERM, Kind.ENTITY)) else None
    if text.tokens[i].kind is not Kind.NUMBER:
        return True
    a, b = unit(i), unit(j)
    return a is None or b is None or a == b


def _list_run(answer: Text, token: Token) -> list[list[Token]]:
    """The list the token is an item of: the run of consecutive short segments (1-3 tokens) of its
    clause that holds its segment; empty when its segment is no short item."""
    clause = sorted((k[1], seg) for k, seg in answer.segments.items()
                    if seg and (seg[0].sentence, seg[0].clause) == (token.sentence, token.clause))
    runs: list[list[list[Token]]] = [[]]
    for _, seg in clause:
        if len(seg) <= LIST_ITEM_TOKENS:
            runs[-1].append(seg)
        elif runs[-1]:
            runs.append([])
    return next((run for run in runs if any(token in seg for seg in run)), [])


def _stuffed(answer: Text, token: Token, is_fact: set[int]) -> bool:
    """The token is an item of a list with three or more items that are no fact, and at least as many of
    them as items that are: the right names buried among wrong ones."""
    run = _list_run(answer, token)
    good = sum(any(id(t) in is_fact for t in seg) for seg in run)
    bad = sum(not any(id(t) in is_fact for t in seg) and any(t.kind is not None for t in seg) for seg in run)
    return bad >= STUFFED_ITEMS and bad >= good


def _mention_verdict(answer: Text, mentions: Sequence[int], negated: bool, rivals: set[int],
                     fact_ids: set[int]) -> tuple[Verdict, str]:
    """How the answer states a fact (or keyword) it mentions at ``mentions``: only with the other polarity
    than ``negated`` (denied), only hedged among ``rivals`` or buried in a list of wrong items (offered
    among alternatives), or asserted at least once (stated)."""
    asserted = [i for i in mentions if answer.tokens[i].negated == negated]
    if not asserted:
        return Verdict.CONTRADICTED, "denied"
    if all(_hedged(answer, i, rivals) or _stuffed(answer, answer.tokens[i], fact_ids) for i in asserted):
        return Verdict.CONTRADICTED, "offered among alternatives"
    return Verdict.SUPPORTED, "stated"


def check(reference: Text, answer: Text, query_keys: set[str]) -> list[Check]:
    """Each fact of the reference (a token of kind number, entity or term that the query does not
    already hold, first mention only) checked against the answer."""
    seen: set[str] = set()
    facts: list[tuple[int, Token]] = []
    for i, t in enumerate(reference.tokens):
        if t.kind is None or t.key in query_keys or t.key in seen:
            continue
        seen.add(t.key)
        facts.append((i, t))
    ref_keys = reference.keys()
    novel = {i for i, t in enumerate(answer.tokens)
             if t.kind in (Kind.NUMBER, Kind.ENTITY) and t.key not in ref_keys and t.key not in query_keys}
    fact_ids = {id(t) for t in answer.tokens if t.key in seen}
    mentions: dict[str, list[int]] = {}
    for i, t in enumerate(answer.tokens):
        mentions.setdefault(t.key, []).append(i)
    substituted = _substitutions(reference, answer, query_keys)
    # Names share slots by accident ("the Dawn Review" beside two different names): a slot needs a common
    # word or unit that is no name.
    names = _entity_keys(reference) | _entity_keys(answer)
    used_rivals: set[int] = set()
    checks: list[Check] = []
    for index, fact in facts:
        core = fact.full_sentence == 0
        if fact.key in substituted:
            checks.append(Check(fact, Verdict.CONTRADICTED, f"{substituted[fact.key]!r} in its place", core))
            continue
        found = mentions.get(fact.key, []) or _approximations(fact, answer, novel)
        if found:
            checks.append(Check(fact, *_mention_verdict(answer, found, fact.negated, novel, fact_ids), core))
            continue
        rival = _rival(reference, index, answer, novel - used_rivals, names) if fact.kind != Kind.TERM else None
        if rival is not None:
            used_rivals.add(rival)
            checks.append(Check(fact, Verdict.CONTRADICTED, f"{answer.tokens[rival].text!r} in its place", core))
        else:
            checks.append(Check(fact, Verdict.MISSING, "not stated", core))
    return checks


def _approximations(fact: Token, answer: Text, novel: set[int]) -> list[int]:
    """Answer numbers that round the fact and say so: "about twenty-nine thousand feet" for 29,032. Rounder
    (fewer significant digits), within ``APPROXIMATE`` of the value, after "about", "roughly", "nearly"..."""
    if fact.value is None or not fact.value:
        return []
    out = []
    for i in novel:
        t = answer.tokens[i]
        cue = {fold(x.text) for x in answer.tokens[max(0, i - 2):i]} & _APPROXIMATELY
        if (t.value is not None and cue and abs(t.value - fact.value) <= APPROXIMATE * abs(fact.value)
                and _significant(t.value) < _significant(fact.value)):
            out.append(i)
    return out


def _significant(value: float) -> int:
    digits = f"{abs(value):.6g}".replace(".", "").replace("-", "").lstrip("0")
    return len(digits.rstrip("0")) or 1


def _rival(reference: Text, index: int, answer: Text, novel: set[int], names: set[str]) -> int | None:
    """A novel number or entity of the answer in the missing fact's slot: same kind, and a content word
    (or unit) that is none of ``names`` in common within three words either side."""
    fact = reference.tokens[index]
    slot = _window(reference, index) - names
    for i in sorted(novel):
        if answer.tokens[i].kind == fact.kind and slot & _window(answer, i):
            return i
    return None


def _entity_keys(text: Text) -> set[str]:
    return {t.key for t in text.tokens if t.kind is Kind.ENTITY and not t.unit}


def _substitutions(reference: Text, answer: Text, query_keys: set[str]) -> dict[str, str]:
    """Fact key -> the answer's words in its place, where the answer copies the reference nearly word for
    word (similarity >= ``NEAR_COPY``) and swaps up to three words for others: a deliberate change, not a
    paraphrase. A swap for a new word ("double" -> "triple") or for another of the reference's facts
    (two dates, two names or two units exchanged) both count."""
    ref_keys, ans_keys = reference.stems(), answer.stems()
    matcher = difflib.SequenceMatcher(None, ref_keys, ans_keys, autojunk=False)
    similarity = matcher.ratio()
    if similarity < NEAR_COPY:
        return {}
    out: dict[str, str] = {}
    for op, r0, r1, a0, a1 in matcher.get_opcodes():
        if op != "replace" or r1 - r0 > SWAP_TOKENS or a1 - a0 > SWAP_TOKENS:
            continue
        replaced = [t for t in reference.tokens[r0:r1] if t.kind is not None and t.key not in query_keys
                    and (t.kind is not Kind.TERM or similarity >= VERBATIM_COPY)]
        placed = [t for t in answer.tokens[a0:a1] if t.kind is not None]
        for fact in replaced:
            rivals = [t for t in placed if t.key != fact.key and (t.kind == fact.kind or t.key not in ref_keys)]
            if rivals:
                out.setdefault(fact.key, " ".join(t.text for t in rivals))
    return out


def keyword_checks(keywords: Sequence[str], answer: Text, query_keys: set[str]) -> list[Check]:
    """Expected keywords (words, phrases or numbers) checked like reference facts: stated and asserted,
    denied, offered among alternatives or buried in a list of wrong items, or missing; a missing keyword
    whose list holds a wrong item of the same sort in its place is contradicted."""
    keys = [read(k) for k in keywords]
    fact_ids: set[int] = set()
    located: list[list[int]] = []
    for k in keys:
        spans = _phrase_spans(answer, [t.key for t in k.tokens if t.kind is not None] or k.stems())
        fact_ids |= {id(answer.tokens[j]) for span in spans for j in span}
        located.append([span[0] for span in spans])
    keyword_keys = {t.key for k in keys for t in k.tokens}
    novel = {i for i, t in enumerate(answer.tokens)
             if t.kind in (Kind.NUMBER, Kind.ENTITY) and t.key not in keyword_keys and t.key not in query_keys}
    wrong_items = _wrong_list_items(answer, fact_ids)
    checks: list[Check] = []
    for raw, k, hits in zip(keywords, keys, located, strict=True):
        number = k.tokens[0].value if len(k.tokens) == 1 else None
        # Every keyword weighs the same (weight 1); a number keyword is a number, so a rival number contradicts it.
        fact = Token(raw, " ".join(k.stems()), Kind.NUMBER if number is not None else Kind.TERM, number, 0, 0, 0)
        verdict = _mention_verdict(answer, hits, False, novel | wrong_items, fact_ids) if hits \
            else (Verdict.MISSING, "not stated")
        checks.append(Check(fact, *verdict, True, keyword=True))
    missing = [c for c in checks if c.verdict is Verdict.MISSING]
    numbers = [c for c in missing if c.fact.kind is Kind.NUMBER]
    # "400 embers a week" for the expected 40
    _contradict(checks, numbers, sorted(i for i in novel if answer.tokens[i].kind is Kind.NUMBER), answer)
    listed = {answer.tokens[i].sentence for hits in located for i in hits}
    _contradict(checks, [c for c in missing if c not in numbers],
                sorted(i for i in wrong_items if answer.tokens[i].sentence in listed), answer)
    return checks


def _contradict(checks: list[Check], missing: Sequence[Check], rivals: Sequence[int], answer: Text) -> None:
    """Pair missing keywords with the answer's wrong values in turn: each pair is a keyword contradicted."""
    for c, rival in zip(missing, rivals, strict=False):
        checks[checks.index(c)] = Check(c.fact, Verdict.CONTRADICTED, f"{answer.tokens[rival].text!r} in its place",
                                        True, keyword=True)


def _phrase_spans(answer: Text, keys: Sequence[str]) -> list[list[int]]:
    """Token indexes of each place the keyword's content words occur together: within one sentence and a
    window of their count + 3 words, in any order ("compute credit" in "credit for compute time")."""
    if not keys:
        return []
    wanted, width = set(keys), len(keys) + 3
    spans: list[list[int]] = []
    tokens = answer.tokens
    for i, t in enumerate(tokens):
        if t.key != keys[0] and (len(keys) == 1 or t.key not in wanted):
            continue
        window = [j for j in range(i, min(len(tokens), i + width)) if tokens[j].sentence == t.sentence]
        if wanted <= {tokens[j].key for j in window} and not (spans and i <= spans[-1][-1]):
            spans.append([j for j in window if tokens[j].key in wanted])
    return spans


def _wrong_list_items(answer: Text, fact_ids: set[int]) -> set[int]:
    """Index of the last content token of each list item that holds no keyword, in lists that hold one."""
    position = {id(t): i for i, t in enumerate(answer.tokens)}
    out: set[int] = set()
    for t in answer.tokens:
        if id(t) not in fact_ids:
            continue
        for seg in _list_run(answer, t):
            content = [x for x in seg if x.kind is not None]
            if content and not any(id(x) in fact_ids for x in seg):
                out.add(position[id(content[-1])])
    return out


def is_bare_list(answer: Text) -> bool:
    """Two or more items and not one function word: a list of names, not a statement."""
    return len([s for s in answer.segments.values() if s]) >= 2 and all(
        fold(t.text) not in STOPWORDS for t in answer.tokens if t.kind is None and t.value is None)


