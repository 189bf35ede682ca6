"""Sequitur (Nevill-Manning & Witten 1997): a context-free grammar of one
sequence, built in linear time by keeping two invariants while reading it:

* digram uniqueness: no pair of adjacent symbols occurs twice (without
  overlapping) in the grammar's right-hand sides;
* rule utility: every rule is used at least twice.

The grammar's rules are the repeated sub-sequences; CoCo-Tune turns them into
tuning blocks shared by several candidate networks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Nonterminal:
    """A reference to rule ``rule`` inside a right-hand side."""

    rule: int

    def __repr__(self):
        return f"R{self.rule}"


class _Rule:
    __slots__ = ("guard", "refs", "serial")

    def __init__(self, serial):
        self.serial = serial
        self.refs = 0
        self.guard = _Sym(None, None, guard_of=self)
        self.guard.prev = self.guard.next = self.guard

    @property
    def first(self):
        return self.guard.next

    @property
    def last(self):
        return self.guard.prev


class _Sym:
    __slots__ = ("prev", "next", "value", "rule", "guard_of", "key")

    def __init__(self, value, rule, guard_of=None):
        self.prev = self.next = None
        self.value = value        # the terminal (when rule is None)
        self.rule = rule          # the referenced rule of a nonterminal
        self.guard_of = guard_of  # the rule whose circular list this guard closes
        # Digram keys compare terminals by value and nonterminals by rule; a
        # guard's key is itself, so it never matches anything.
        self.key = self if guard_of is not None else (("r", id(rule)) if rule else ("t", value))


class _Builder:
    def __init__(self):
        self.index = {}   # digram key -> the symbol that starts its one occurrence
        self.serial = 0
        self.steps = 0    # digram checks made: linear in the input length
        self.start = self._new_rule()

    def _new_rule(self):
        self.serial += 1
        return _Rule(self.serial)

    # -- linked list and digram index ------------------------------------
    def _digram(self, s):
        return (s.key, s.next.key)

    def _forget(self, s):
        """Drops the digram starting at ``s`` from the index (if indexed there)."""
        if s.guard_of is not None or s.next.guard_of is not None:
            return
        k = self._digram(s)
        if self.index.get(k) is s:
            del self.index[k]

    def _join(self, left, right):
        if left.next is not None:
            self._forget(left)
            # In a run "xxx" only the first "xx" is indexed; when the run is
            # cut, the surviving overlapping "xx" must take over the entry.
            if (right.prev is not None and right.next is not None
                    and right.key == right.prev.key == right.next.key):
                self.index[self._digram(right)] = right
            if (left.prev is not None and left.next is not None
                    and left.key == left.prev.key == left.next.key):
                self.index[self._digram(left.prev)] = left.prev
        left.next, right.prev = right, left

    def _insert_after(self, at, s):
        self._join(s, at.next)
        self._join(at, s)

    def _delete(self, s):
        self._join(s.prev, s.next)
        self._forget(s)
        if s.rule is not None:
            s.rule.refs -= 1

    def _make(self, like):
        if like.rule is not None:
            like.rule.refs += 1
            return _Sym(None, like.rule)
        return _Sym(like.value, None)

    # -- the algorithm ------------------------------------------------------
    def append(self, value):
        self._insert_after(self.start.last, _Sym(value, None))
        self._check(self.start.last.prev)

    def _check(self, s):
        """Enforces digram uniqueness for the digram starting at ``s``;
        True when it changed the grammar."""
        self.steps += 1
        if s.guard_of is not None or s.next.guard_of is not None:
            return False
        k = self._digram(s)
        found = self.index.get(k)
        if found is None:
            self.index[k] = s
            return False
        if found.next is not s:  # overlapping occurrences ("xxx") do not count
            self._match(s, found)
        return True

    def _match(self, s, found):
        if found.prev.guard_of is not None and found.next.next.guard_of is not None:
            rule = found.prev.guard_of  # the digram is a whole rule already: reuse it
            self._substitute(s, rule)
        else:
            rule = self._new_rule()
            a, b = self._make(s), self._make(s.next)
            self._insert_after(rule.last, a)
            self._insert_after(rule.last, b)
            self._substitute(found, rule)
            self._substitute(s, rule)
            self.index[self._digram(rule.first)] = rule.first
        # Rule utility: a rule in the new body may now be used only once.
        for sym in (rule.first, rule.last):
            if sym.guard_of is None and sym.rule is not None and sym.rule.refs == 1:
                self._expand(sym)

    def _substitute(self, s, rule):
        q = s.prev
        self._delete(q.next)
        self._delete(q.next)
        nt = _Sym(None, rule)
        rule.refs += 1
        self._insert_after(q, nt)
        if not self._check(q):
            self._check(q.next)

    def _expand(self, s):
        """Replaces the nonterminal ``s`` (the last use of its rule) by the body."""
        left, right, rule = s.prev, s.next, s.rule
        first, last = rule.first, rule.last
        self._forget(s)
        self._join(s.prev, s.next)   # unlinks s (its rule goes away with it)
        self._join(left, first)
        self._join(last, right)
        if last.guard_of is None and right.guard_of is None:
            self.index[self._digram(last)] = last
        if left.guard_of is None and first.guard_of is None:
            self.index.setdefault(self._digram(left), left)


@dataclass(frozen=True)
class Grammar:
    """Rules ``{id: body}``; rule 0 is the start rule. A body holds terminals
    (the input's own items) and :class:`Nonterminal` references."""

    rules: dict
    steps: int = 0

    def expand(self, rule: int = 0) -> list:
        """The terminal string rule ``rule`` derives (the input for rule 0)."""
        out, stack = [], [iter(self.rules[rule])]
        while stack:
            for sym in stack[-1]:
                if isinstance(sym, Nonterminal):
                    stack.append(iter(self.rules[sym.rule]))
                    break
                out.append(sym)
            else:
                stack.pop()
        return out

    def uses(self) -> dict:
        """How many times each rule occurs in the right-hand sides."""
        count = {r: 0 for r in self.rules}
        for body in self.rules.values():
            for sym in body:
                if isinstance(sym, Nonterminal):
                    count[sym.rule] += 1
        return count

    def __str__(self):
        return "\n".join(f"R{r} -> " + " ".join(map(repr, body)) for r, body in self.rules.items())


def sequitur(sequence) -> Grammar:
    """The Sequitur grammar of ``sequence`` (an iterable of hashable items),
    in time linear in its length. The start rule is 0; the others are
    numbered 1, 2, ... as a walk from it first meets them (deterministic)."""
    b = _Builder()
    for item in sequence:
        try:
            hash(item)
        except TypeError:
            raise ValueError(f"sequence: items must be hashable, got {item!r}") from None
        b.append(item)
    ids, rules, todo = {id(b.start): 0}, {}, [b.start]
    while todo:
        rule = todo.pop()
        body, s = [], rule.first
        while s.guard_of is None:
            if s.rule is not None:
                if id(s.rule) not in ids:
                    ids[id(s.rule)] = len(ids)
                    todo.append(s.rule)
                body.append(Nonterminal(ids[id(s.rule)]))
            else:
                body.append(s.value)
            s = s.next
        rules[ids[id(rule)]] = tuple(body)
    return Grammar(dict(sorted(rules.items())), b.steps)
