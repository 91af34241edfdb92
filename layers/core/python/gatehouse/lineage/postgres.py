"""Column lineage for Postgres statements: which source columns each output value comes from.

The design follows sqlglot's lineage (scopes, then each output expression walked down to its
sources), on PostgreSQL's own parse tree (pglast) and the target's catalog:

1. every FROM item becomes a scope item with named columns, each carrying a `Flow`: a table's
   column flows from itself; a view's, CTE's, subquery's or set operation's columns flow from
   whatever their own outputs flow from (views are expanded from their definitions);
2. every output expression is walked: a column reference passes its flow on unchanged, anything
   else (an operator, a function, a cast, CASE, an aggregate, a subquery's value, a row or array
   constructor, a JSON or XML builder) computes a new value from the union of its inputs;
3. columns used in WHERE, JOIN ... ON, GROUP BY, HAVING, ORDER BY, DISTINCT ON, window
   partitions and orders and LIMIT are collected apart: they are oracles (a predicate on a column
   can reveal its value one bit at a time), handed to Cedar as a policy input.

Names are resolved the way the server resolves them: a relation through `search_path` (a CTE of
the same name shadows a table from the point it is defined), an unqualified column through the
FROM items of the innermost query level and then the outer ones, `t.x` as a column of `t` and
otherwise as the call `x(t)` (attribute notation), `(c).x` as a field of the row `c` or the call
`x(c)`. Whatever cannot be resolved, or any function Gatehouse does not know to be a pure
built-in (it could read any table), makes the flow opaque: masked as protected.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pglast.parser import ParseError, parse_sql_json

from gatehouse.classify.functions import classify_function
from gatehouse.lineage.catalog import Catalog, Relation
from gatehouse.models import StatementClass

Node = dict[str, Any]
MAX_VIA = 6  # transformations named in a report; more are summarised
MAX_VIEW_DEPTH = 16
MAX_RECURSION_ROUNDS = 24

# Built-in set-returning functions: how many rows they yield depends on their arguments.
SET_RETURNING = frozenset(
    {
        "generate_series", "generate_subscripts", "unnest", "regexp_matches", "regexp_split_to_table",
        "string_to_table", "json_array_elements", "json_array_elements_text", "jsonb_array_elements",
        "jsonb_array_elements_text", "json_each", "json_each_text", "jsonb_each", "jsonb_each_text",
        "json_object_keys", "jsonb_object_keys", "jsonb_path_query", "jsonb_path_query_tz",
        "json_populate_recordset", "jsonb_populate_recordset", "json_to_recordset", "jsonb_to_recordset",
    }
)  # fmt: skip

# Set-returning functions whose output columns are known, for `SELECT * FROM f(...)` shapes.
SRF_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "json_each": ("key", "value"),
    "jsonb_each": ("key", "value"),
    "json_each_text": ("key", "value"),
    "jsonb_each_text": ("key", "value"),
    "json_array_elements": ("value",),
    "jsonb_array_elements": ("value",),
    "json_array_elements_text": ("value",),
    "jsonb_array_elements_text": ("value",),
}


@dataclass(frozen=True)
class Flow:
    """Where one value comes from."""

    sources: frozenset[str] = frozenset()  # "schema.table.column"
    computed: bool = False  # False: a source's value arrives unchanged
    opaque: str = ""  # non-empty: lineage could not be determined, and why
    via: tuple[str, ...] = ()  # the transformations on the way ("reverse()", "||", "::bigint")

    def derived(self, how: str | None = None) -> Flow:
        if not self.sources and not self.opaque:
            return self
        via = self.via if how is None or how in self.via else (*self.via, how)[-MAX_VIA:]
        return Flow(self.sources, True, self.opaque, via)


EMPTY = Flow()


def merge(flows: Iterable[Flow], *, computed: bool = False, how: str | None = None) -> Flow:
    """The flow of a value that is one of `flows` (computed: a value made from all of them)."""
    sources: set[str] = set()
    via: dict[str, None] = {}
    opaque = ""
    any_computed = computed
    for f in flows:
        sources |= f.sources
        via.update(dict.fromkeys(f.via))
        opaque = opaque or f.opaque
        any_computed = any_computed or f.computed
    if not sources and not opaque:
        return EMPTY
    if how is not None and computed:
        via[how] = None
    return Flow(frozenset(sources), any_computed, opaque, tuple(via)[-MAX_VIA:])


@dataclass(frozen=True)
class Output:
    name: str
    flow: Flow
    star: bool = False  # stands for any number of columns, each with this flow


@dataclass(frozen=True)
class StatementLineage:
    """What one statement's result and predicates derive from."""

    outputs: tuple[Output, ...] = ()
    returns_rows: bool = False
    filtered: frozenset[str] = frozenset()  # source columns used in predicates and orderings
    filtered_opaque: bool = False  # a predicate on a value whose source is unknown
    field_calls: tuple[str, ...] = ()  # functions called with attribute notation (`t.f`, `(x).f`)
    missing: tuple[str, ...] = ()  # relations the catalog does not hold
    opaque: str = ""  # the shape or the sources of the result are unknown, and why
    referenced: frozenset[str] = frozenset()  # every source column the statement reads, anywhere
    hidden_code: tuple[str, ...] = ()  # code it runs without naming it: views, domains, operators
    untraceable: str = ""  # lineage could not walk the whole statement: it cannot be called a read

    def columns(self, count: int) -> list[Flow]:
        """One flow per column of a result with `count` columns."""
        if self.opaque:
            return [Flow(opaque=self.opaque)] * count
        fixed = [o for o in self.outputs if not o.star]
        stars = [o for o in self.outputs if o.star]
        if not stars:
            if len(fixed) != count:
                why = f"lineage found {len(fixed)} columns, the result has {count}"
                return [Flow(opaque=why)] * count
            return [o.flow for o in fixed]
        if len(fixed) > count:
            why = f"lineage found at least {len(fixed)} columns, the result has {count}"
            return [Flow(opaque=why)] * count
        first = next(i for i, o in enumerate(self.outputs) if o.star)
        last = max(i for i, o in enumerate(self.outputs) if o.star)
        head = [o.flow for o in self.outputs[:first]]
        tail = [o.flow for o in self.outputs[last + 1 :]]
        middle = merge(o.flow for o in self.outputs[first : last + 1])
        return head + [middle] * (count - len(head) - len(tail)) + tail


# -- scopes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TracedView:
    """A view's definition, traced once per catalog snapshot, and what tracing it found."""

    outputs: tuple[Output, ...]
    field_calls: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    hidden_code: tuple[str, ...] = ()
    too_deep: bool = False


@dataclass
class _Item:
    """One FROM item: a relation, a subquery, a function, a CTE reference."""

    name: str | None
    schema: str | None = None
    columns: list[tuple[str, Flow]] | None = None  # None: unknown columns
    unknown_flow: Flow = EMPTY  # the flow of any column when the columns are unknown

    def column(self, name: str) -> Flow | None:
        if self.columns is None:
            return self.unknown_flow
        found = [flow for column, flow in self.columns if column == name]
        # Two columns of one name: Postgres calls a reference ambiguous; lineage never picks one.
        return merge(found) if found else None

    def whole_row(self) -> Flow:
        if self.columns is None:
            return self.unknown_flow.derived("row")
        return merge((f for _, f in self.columns), computed=True, how="row")

    def star(self) -> list[Output]:
        if self.columns is None:
            return [Output("*", self.unknown_flow, star=True)]
        return [Output(c, f) for c, f in self.columns]


@dataclass
class _Level:
    """The FROM items of one query level, in order, with the columns USING merged."""

    items: list[_Item] = field(default_factory=list)
    star_order: list[Output] = field(default_factory=list)
    using: dict[str, Flow] = field(default_factory=dict)
    opaque_shape: str = ""  # set when `*` over this level cannot be listed


@dataclass
class _Scope:
    levels: list[_Level]  # innermost first
    ctes: dict[str, list[Output]]


class _Analyzer:
    def __init__(self, catalog: Catalog, views: dict[int, _TracedView], view_stack: tuple[int, ...] = ()):
        self.catalog = catalog
        self.views = views
        self.view_stack = view_stack
        self.filtered: list[Flow] = []
        self.field_calls: dict[str, None] = {}
        self.missing: dict[str, None] = {}
        self.referenced: set[str] = set()  # every source any expression of the statement reads
        self.resolved: set[int] = set()  # field selections that resolved to columns (node ids)
        self.hidden_code: dict[str, None] = {}  # code the text runs without naming it (views, domains)
        self.unsafe_calls: dict[str, None] = {}  # calls of functions not known to be reads
        self.too_deep = False
        # A scalar subquery's column whose name lineage cannot tell (`(SELECT * FROM ...)` over a
        # shape it cannot list): a name that is not Postgres' could misdirect a later reference.
        self.unnamed = False
        self._first_outputs: dict[int, Output | None] = {}  # EXPR sublinks traced: their first column
        self._calls_made = 0

    # -- queries ---------------------------------------------------------------------------

    def _with(
        self, body: Node, outer: list[_Level], ctes: dict[str, list[Output]]
    ) -> dict[str, list[Output]]:
        """The CTEs a query (or a write) may name, its own WITH added to those it inherits."""
        ctes = dict(ctes)
        with_clause = body.get("withClause")
        if with_clause:
            definitions = [w.get("CommonTableExpr") or {} for w in with_clause.get("ctes") or ()]
            if with_clause.get("recursive"):
                ctes = self._recursive_ctes(definitions, outer, ctes)
            else:
                for cte in definitions:  # each sees the ones before it, never itself
                    ctes[cte.get("ctename", "")] = self._cte(cte, outer, ctes)
        return ctes

    def select(self, body: Node, outer: list[_Level], ctes: dict[str, list[Output]]) -> list[Output]:
        ctes = self._with(body, outer, ctes)
        op = body.get("op", "SETOP_NONE")
        if op != "SETOP_NONE":
            left = self.select(body.get("larg") or {}, outer, ctes)
            right = self.select(body.get("rarg") or {}, outer, ctes)
            # keep_shape: inside WITH RECURSIVE, the recursive term names the CTE before its
            # columns are known; the other branch gives the shape.
            outputs = _union_outputs(left, right, keep_shape=True)
            if op != "SETOP_UNION" or not body.get("all"):
                # INTERSECT, EXCEPT and UNION without ALL compare rows: a row that matches a
                # guessed value tells the agent the value (the same oracle as a WHERE).
                self.filtered.extend(o.flow for o in outputs)
            self._orderings(body, _Scope([_Level(), *outer], ctes), outputs)
            return outputs
        if body.get("valuesLists"):
            rows = [self._values_row(r, _Scope(outer, ctes)) for r in body["valuesLists"]]
            outputs = [Output(f"column{i + 1}", merge(col)) for i, col in enumerate(zip(*rows, strict=False))]
            self._orderings(body, _Scope([_Level(), *outer], ctes), outputs)
            return outputs
        level = self._from(body.get("fromClause") or (), outer, ctes)
        scope = _Scope([level, *outer], ctes)
        outputs = []
        for wrapped in body.get("targetList") or ():
            target = wrapped.get("ResTarget") or {}
            outputs.extend(self._target(target, scope))
        for clause in ("whereClause", "havingClause"):
            if body.get(clause):
                self.filtered.append(self.expr(body[clause], scope))
        for wrapped in body.get("windowClause") or ():
            self._window(wrapped.get("WindowDef") or {}, scope)
        distinct = body.get("distinctClause")
        if distinct is not None and all(not item for item in distinct):
            self.filtered.extend(o.flow for o in outputs)  # plain DISTINCT compares whole rows
        for item in distinct or ():
            if item:
                self.filtered.append(self._ordering_flow(item, scope, outputs))
        self._orderings(body, scope, outputs)
        return outputs

    def _cte(self, cte: Node, outer: list[_Level], ctes: dict[str, list[Output]]) -> list[Output]:
        kind, body = _unwrap(cte.get("ctequery") or {})
        return _rename(self.statement_outputs(kind, body, outer, ctes), _names(cte.get("aliascolnames")))

    def _recursive_ctes(
        self, definitions: list[Node], outer: list[_Level], ctes: dict[str, list[Output]]
    ) -> dict[str, list[Output]]:
        """WITH RECURSIVE: every CTE may name every other (and itself), earlier or later, so all
        are traced together, each round feeding the last round's flows back in, until nothing
        changes. Flows only grow, so this ends; a cap keeps a pathological text bounded, and what
        has not settled by then is untraceable."""
        current = dict(ctes)
        names = [d.get("ctename", "") for d in definitions]
        for name in names:
            current[name] = [Output("*", EMPTY, star=True)]
        for _ in range(MAX_RECURSION_ROUNDS):
            changed = False
            for definition, name in zip(definitions, names, strict=True):
                traced = _union_outputs(current[name], self._cte(definition, outer, current), keep_shape=True)
                if traced != current[name]:
                    current[name], changed = traced, True
            if not changed:
                return current
        why = "a recursive CTE did not settle"
        for name in names:
            current[name] = [Output("*", Flow(opaque=why), star=True)]
        return current

    def statement_outputs(
        self, kind: str | None, body: Node, outer: list[_Level], ctes: dict[str, list[Output]]
    ) -> list[Output]:
        if kind == "SelectStmt":
            return self.select(body, outer, ctes)
        if kind in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
            return self._returning(body, outer, ctes)
        return [Output("*", Flow(opaque=f"{kind} has no traceable result"), star=True)]

    def _returning(self, body: Node, outer: list[_Level], ctes: dict[str, list[Output]]) -> list[Output]:
        """RETURNING of a write: the target's columns, and (conservatively) everything written.

        Every part of a write is traced, so no call in it goes unseen: its WITH, the rows it
        inserts, SET, WHERE, ON CONFLICT (with `excluded`), MERGE's source and WHEN clauses.
        """
        ctes = self._with(body, outer, ctes)
        items: list[_Item] = []
        relation = body.get("relation")
        target = self._range_var(relation, ctes) if relation else None
        if target is not None:
            items.append(target)
        sources = [s for s in (body.get("sourceRelation"),) if s]  # MERGE ... USING
        level = self._from(
            [*sources, *(body.get("fromClause") or body.get("usingClause") or ())], outer, ctes
        )
        level.items[:0] = items
        scope = _Scope([level, *outer], ctes)
        written: list[Flow] = []
        select = body.get("selectStmt")
        if select:
            kind, inner = _unwrap(select)
            written.extend(o.flow for o in self.statement_outputs(kind, inner, outer, ctes))
        for wrapped in body.get("targetList") or ():  # UPDATE ... SET
            written.append(self.expr((wrapped.get("ResTarget") or {}).get("val"), scope))
        for key in ("whereClause", "joinCondition"):
            if body.get(key):
                self.filtered.append(self.expr(body[key], scope))
        conflict = body.get("onConflictClause") or {}
        if conflict:
            excluded = _Item(name="excluded", columns=list(target.columns or []) if target else None)
            conflict_scope = _Scope([_Level(items=[*level.items, excluded]), *outer], ctes)
            for wrapped in conflict.get("targetList") or ():
                written.append(self.expr((wrapped.get("ResTarget") or {}).get("val"), conflict_scope))
            if conflict.get("whereClause"):
                self.filtered.append(self.expr(conflict["whereClause"], conflict_scope))
        for wrapped in body.get("mergeWhenClauses") or body.get("whenClauses") or ():
            when = wrapped.get("MergeWhenClause") or {}
            if when.get("condition"):
                self.filtered.append(self.expr(when["condition"], scope))
            for wrapped_target in when.get("targetList") or ():
                written.append(self.expr((wrapped_target.get("ResTarget") or {}).get("val"), scope))
            for value in when.get("values") or ():
                written.append(self.expr(value, scope))
        extra = merge(written, computed=True, how="written")
        outputs = []
        returning = (body.get("returningClause") or {}).get("exprs") or body.get("returningList") or ()
        for wrapped in returning:
            for out in self._target(wrapped.get("ResTarget") or {}, scope):
                flow = merge([out.flow, extra]) if extra is not EMPTY else out.flow
                outputs.append(Output(out.name, flow, out.star))
        return outputs

    def _values_row(self, row: Node, scope: _Scope) -> list[Flow]:
        items = (row.get("List") or {}).get("items") or ()
        return [self.expr(item, scope) for item in items]

    def _orderings(self, body: Node, scope: _Scope, outputs: list[Output]) -> None:
        for wrapped in body.get("sortClause") or ():
            sort = wrapped.get("SortBy") or {}
            self.filtered.append(self._ordering_flow(sort.get("node"), scope, outputs))
        for item in body.get("groupClause") or ():
            self.filtered.append(self._ordering_flow(item, scope, outputs))
        for clause in ("limitCount", "limitOffset"):
            if body.get(clause):
                self.filtered.append(self.expr(body[clause], scope))

    def _ordering_flow(self, node: Any, scope: _Scope, outputs: list[Output]) -> Flow:
        """ORDER BY / GROUP BY / DISTINCT ON item: an output name or position, or an expression."""
        kind, body = _unwrap(node)
        if kind == "A_Const" and "ival" in body:
            position = int((body.get("ival") or {}).get("ival", 0))
            fixed = [o for o in outputs if not o.star]
            if 1 <= position <= len(fixed) and not any(o.star for o in outputs):
                return fixed[position - 1].flow
            return merge(o.flow for o in outputs)
        flows: list[Flow] = []
        if kind == "ColumnRef":
            fields = body.get("fields") or []
            if len(fields) == 1 and "String" in fields[0]:
                name = fields[0]["String"].get("sval", "")
                flows.extend(o.flow for o in outputs if o.name == name)
                if flows and not self._resolves(name, scope):
                    return merge(flows)
        flows.append(self.expr(node, scope))
        return merge(flows)

    def _resolves(self, name: str, scope: _Scope) -> bool:
        level = scope.levels[0] if scope.levels else _Level()
        return name in level.using or any(
            item.columns is None or item.column(name) is not None for item in level.items
        )

    def _window(self, window: Node, scope: _Scope) -> None:
        for key in ("startOffset", "endOffset"):
            if window.get(key):
                self.filtered.append(self.expr(window[key], scope))
        for item in window.get("partitionClause") or ():
            self.filtered.append(self.expr(item, scope))
        for wrapped in window.get("orderClause") or ():
            self.filtered.append(self.expr((wrapped.get("SortBy") or {}).get("node"), scope))

    # -- FROM ------------------------------------------------------------------------------

    def _from(self, items: Iterable[Node], outer: list[_Level], ctes: dict[str, list[Output]]) -> _Level:
        level = _Level()
        for node in items:
            self._from_item(node, level, outer, ctes, [level])
        return level

    def _from_item(
        self,
        node: Node,
        level: _Level,
        outer: list[_Level],
        ctes: dict[str, list[Output]],
        siblings: list[_Level],
    ) -> None:
        """One FROM item into `level`. `siblings` are the items before it (and a join's left side):
        as in Postgres, only a LATERAL subquery, and any function in FROM, may name them; a
        subquery that is not LATERAL resolves its names in the outer query levels only."""
        kind, body = _unwrap(node)
        lateral = [*siblings, *outer]
        if kind == "RangeVar":
            item = self._range_var(body, ctes)
        elif kind == "RangeSubselect":
            sub_kind, sub = _unwrap(body.get("subquery") or {})
            seen = lateral if body.get("lateral") else outer
            outputs = self.statement_outputs(sub_kind, sub, seen, ctes)
            item = _item_from_outputs(body.get("alias"), outputs)
        elif kind == "RangeFunction":
            item = self._range_function(body, _Scope(lateral, ctes))
        elif kind == "JoinExpr":
            self._join(body, level, outer, ctes, siblings)
            return
        elif kind == "RangeTableSample":
            item = self._range_var(_unwrap(body.get("relation") or {})[1], ctes)
            for arg in [*(body.get("args") or ()), body.get("repeatable")]:
                if arg:
                    self.filtered.append(self.expr(arg, _Scope(lateral, ctes)))
        else:
            # XMLTABLE, JSON_TABLE and the like: columns computed from their arguments.
            flow = merge((self.expr(v, _Scope(lateral, ctes)) for v in _children(body)), computed=True)
            alias = body.get("alias") or {}
            item = _Item(
                name=alias.get("aliasname"), columns=None, unknown_flow=flow.derived(kind or "table")
            )
        level.items.append(item)
        level.star_order.extend(item.star())

    def _join(
        self,
        body: Node,
        level: _Level,
        outer: list[_Level],
        ctes: dict[str, list[Output]],
        siblings: list[_Level],
    ) -> None:
        left, right = _Level(), _Level()
        self._from_item(body.get("larg") or {}, left, outer, ctes, siblings)
        # A LATERAL item on the right sees the left side and the items before the join.
        self._from_item(body.get("rarg") or {}, right, outer, ctes, [left, *siblings])
        using = _names(body.get("usingClause"))
        if body.get("isNatural"):
            # NATURAL: every column name both sides share, in the left side's order.
            right_names = {o.name for o in right.star_order if not o.star}
            using = [o.name for o in left.star_order if not o.star and o.name in right_names]
            if any(o.star for o in left.star_order + right.star_order):
                using = []
                level.opaque_shape = "a NATURAL join over columns lineage cannot list"
        merged: dict[str, Flow] = {}
        for name in dict.fromkeys(using):
            flows = [o.flow for o in left.star_order + right.star_order if o.name == name]
            merged[name] = merge(flows)
            # USING and NATURAL compare the columns: a join key is a predicate, an oracle.
            self.filtered.extend(flows)
        level.items.extend(left.items + right.items)
        level.using.update(left.using)
        level.using.update(right.using)
        level.using.update(merged)
        order = [Output(n, f) for n, f in merged.items()]
        order += [o for o in left.star_order + right.star_order if o.name not in merged]
        alias = body.get("alias") or body.get("join_using_alias")
        if alias:
            level.items.append(_item_from_outputs(alias, order))
        level.star_order.extend(order)
        if body.get("quals"):
            both = _Level(items=left.items + right.items, star_order=order, using=merged)
            self.filtered.append(self.expr(body["quals"], _Scope([both, *outer], ctes)))

    def _range_var(self, body: Node, ctes: Mapping[str, list[Output]]) -> _Item:
        name = body.get("relname", "")
        schema = body.get("schemaname")
        alias = body.get("alias") or {}
        shown = alias.get("aliasname") or name
        if schema is None and name in ctes:
            return _item_from_outputs({"aliasname": shown, "colnames": alias.get("colnames")}, ctes[name])
        relation = self.catalog.resolve(name, schema)
        if relation is None:
            qualified = f"{schema}.{name}" if schema else name
            self.missing[qualified] = None
            flow = Flow(opaque=f"relation {qualified} is not in the catalog")
            return _Item(name=shown, schema=schema, columns=None, unknown_flow=flow)
        flows = self._relation_flows(relation)
        colnames = _names(alias.get("colnames"))
        columns = [
            (colnames[i] if i < len(colnames) else column, flow)
            for i, (column, flow) in enumerate(zip(relation.columns, flows, strict=True))
        ]
        return _Item(name=shown, schema=None if alias.get("aliasname") else relation.schema, columns=columns)

    def _relation_flows(self, relation: Relation) -> list[Flow]:
        own = [Flow(frozenset({f"{relation.qualified}.{c}"})) for c in relation.columns]
        if not relation.is_view or relation.is_system:
            return own
        outputs = self._view_outputs(relation)
        if len(outputs) != len(relation.columns) or any(o.star for o in outputs):
            why = f"the definition of view {relation.qualified} could not be traced"
            return [Flow(o.sources, True, why) for o in own]
        # A view column is a source of its own too, so a profile may protect `view.column`.
        return [merge([mine, o.flow]) for mine, o in zip(own, outputs, strict=True)]

    def _view_outputs(self, relation: Relation) -> list[Output]:
        cached = self.views.get(relation.oid)
        if cached is None:
            cached = self._trace_view(relation)
            self.views[relation.oid] = cached
        # What tracing the view found counts for every statement that reads it, memo or not.
        self.field_calls.update(dict.fromkeys(cached.field_calls))
        self.missing.update(dict.fromkeys(cached.missing))
        self.hidden_code.update(dict.fromkeys(cached.hidden_code))
        self.too_deep = self.too_deep or cached.too_deep
        return list(cached.outputs)

    def _trace_view(self, relation: Relation) -> _TracedView:
        if relation.oid in self.view_stack or len(self.view_stack) >= MAX_VIEW_DEPTH:
            why = f"view {relation.qualified} nests too deep"
            return _TracedView((Output("*", Flow(opaque=why), star=True),), too_deep=True)
        try:
            tree = json.loads(parse_sql_json(relation.view_sql or ""))
            ((kind, body),) = tree["stmts"][0]["stmt"].items()
        except (ParseError, ValueError, KeyError, IndexError) as exc:
            why = f"the definition of view {relation.qualified} does not parse ({type(exc).__name__})"
            return _TracedView((Output("*", Flow(opaque=why), star=True),))
        inner = _Analyzer(self.catalog, self.views, (*self.view_stack, relation.oid))
        outputs = inner.statement_outputs(kind, body, [], {})
        for node_id, names in _field_selections(body):
            if node_id not in inner.resolved:
                inner.field_calls.update(dict.fromkeys(names))
        # What the view filters on is fixed by its owner, not chosen by the agent: not an oracle.
        # Code in a view runs when the view is read, unseen by the classifier.
        hidden = [*inner.hidden_code, *(f"function {n}" for n in inner.unsafe_calls)]
        return _TracedView(
            tuple(outputs),
            field_calls=tuple(inner.field_calls),
            missing=tuple(inner.missing),
            hidden_code=tuple(f"view {relation.qualified} calls {code}" for code in hidden),
            too_deep=inner.too_deep,
        )

    def _range_function(self, body: Node, scope: _Scope) -> _Item:
        flows: list[Flow] = []
        names: list[str] = []
        known_shape = True
        for wrapped in body.get("functions") or ():
            parts = (wrapped.get("List") or {}).get("items") or []
            call = parts[0] if parts else {}
            flows.append(self.expr(call, scope))
            kind, fn = _unwrap(call)
            coldefs = parts[1] if len(parts) > 1 and parts[1] else None
            fname = _func_name(fn) if kind == "FuncCall" else ""
            if coldefs:
                names.extend(_coldef_names((coldefs.get("List") or {}).get("items") or ()))
            elif fname in SRF_COLUMNS:
                names.extend(SRF_COLUMNS[fname])
            elif fname == "unnest":
                names.extend(["unnest"] * max(1, len(fn.get("args") or ())))
            elif kind == "FuncCall" and fname:
                names.append(fname)
                known_shape = known_shape and _single_column_function(fname)
            else:
                known_shape = False
        for item in _coldef_names(body.get("coldeflist") or ()):
            names.append(item)
        flow = merge(flows, computed=True)
        # How many rows a function in FROM yields depends on its arguments: with a protected
        # argument, the row count (count(*), or just the rows) is an oracle on it, unless the
        # argument's shape alone fixes the count (unnest of ARRAY[...], the keys of a whole row).
        for wrapped, call_flow in zip(body.get("functions") or (), flows, strict=False):
            parts = (wrapped.get("List") or {}).get("items") or []
            kind, fn = _unwrap(parts[0] if parts else {})
            if not (
                kind == "FuncCall"
                and _count_is_fixed(_func_name(fn), fn.get("args") or [], self._row_ref(scope))
            ):
                self.filtered.append(call_flow)
        alias = body.get("alias") or {}
        colnames = _names(alias.get("colnames"))
        if body.get("ordinality"):
            names.append("ordinality")
        if not known_shape and not colnames:
            return _Item(name=alias.get("aliasname"), columns=None, unknown_flow=flow)
        functions = list(body.get("functions") or [])
        if len(functions) == 1 and alias.get("aliasname") and not colnames and _scalar_names(functions[0]):
            # FROM f(...) AS a: a function returning one value names its column a, too
            # (chooseScalarFunctionAlias in parse_relation.c).
            names[0] = str(alias["aliasname"])
        columns = [(colnames[i] if i < len(colnames) else n, flow) for i, n in enumerate(names)]
        if body.get("ordinality"):
            columns[-1] = (columns[-1][0], EMPTY)
        return _Item(name=alias.get("aliasname") or (names[0] if len(names) == 1 else None), columns=columns)

    # -- targets -----------------------------------------------------------------------------

    def _target(self, target: Node, scope: _Scope) -> list[Output]:
        val = target.get("val")
        kind, body = _unwrap(val)
        name = target.get("name")
        if kind == "ColumnRef" and body.get("fields") and "A_Star" in body["fields"][-1]:
            return self._star(body["fields"][:-1], scope)
        if kind == "A_Indirection" and (body.get("indirection") or [{}])[-1].get("A_Star") is not None:
            arg_kind, arg = _unwrap(body.get("arg"))
            fields = arg.get("fields") or [] if arg_kind == "ColumnRef" else []
            if len(body.get("indirection") or ()) == 1 and len(fields) == 1 and "String" in fields[0]:
                name = fields[0]["String"].get("sval", "")
                item = self._find_item([name], scope) if self._unqualified(name, scope) is None else None
                if item is not None:
                    return item.star()  # (c).* is c.*: each column with its own flow
            flow = self.expr(body.get("arg"), scope)
            return [Output("*", flow, star=True)]
        flow = self.expr(val, scope)  # first: it traces the subqueries whose names _figure needs
        return [Output(name or self._figure_name(val), flow)]

    def _figure_name(self, val: Any) -> str:
        return _figure_name(val, self._sublink_name)

    def _sublink_name(self, body: Node) -> str | None:
        """The name Postgres gives a scalar subquery: its first column's, as traced."""
        first = self._first_outputs.get(id(body))
        if first is None or first.star:
            self.unnamed = True
            return None
        return first.name

    def _star(self, qualifier: list[Node], scope: _Scope) -> list[Output]:
        names = [str(f.get("String", {}).get("sval", "")) for f in qualifier]
        if not names:
            level = scope.levels[0] if scope.levels else _Level()
            if level.opaque_shape:
                return [
                    Output(
                        "*",
                        merge([*(o.flow for o in level.star_order), Flow(opaque=level.opaque_shape)]),
                        star=True,
                    )
                ]
            return list(level.star_order)
        item = self._find_item(names, scope)
        if item is None:
            return [Output("*", Flow(opaque=f"{'.'.join(names)}.* names no relation in scope"), star=True)]
        return item.star()

    # -- expressions -------------------------------------------------------------------------

    def expr(self, node: Any, scope: _Scope) -> Flow:
        try:
            flow = self._expr(node, scope)
        except RecursionError:
            # Untraceable is not merely masked: a call hidden past this depth would go unseen.
            self.too_deep = True
            return Flow(opaque="the expression nests too deep to trace")
        self.referenced |= flow.sources
        return flow

    def _expr(self, node: Any, scope: _Scope) -> Flow:
        if not node:
            return EMPTY
        if type(node) is list:
            return merge((self._expr(n, scope) for n in node), computed=True)
        kind, body = _unwrap(node)
        if kind in _CONSTANTS:
            return EMPTY
        if kind == "ColumnRef":
            return self._column_ref(body, scope)
        if kind == "A_Indirection":
            return self._indirection(body, scope)
        if kind == "FuncCall":
            return self._func_call(body, scope)
        if kind == "SubLink":
            return self._sublink(body, scope)
        if kind == "TypeCast":
            type_name = _type_name(body.get("typeName") or {})
            if type_name in self.catalog.domains:
                self.hidden_code[f"domain {type_name} (its CHECK constraints)"] = None
            elif self.catalog.types and type_name not in self.catalog.types:
                self.missing[f"type {type_name}"] = None  # created since the snapshot: read it again
            return self._expr(body.get("arg"), scope).derived(f"::{type_name}")
        if kind == "A_Expr":
            op = ".".join(str(n.get("String", {}).get("sval", "")) for n in body.get("name") or ())
            if op.rsplit(".", 1)[-1] in self.catalog.operators:
                self.hidden_code[f"operator {op}"] = None
            flows = [self._expr(body.get("lexpr"), scope), self._expr(body.get("rexpr"), scope)]
            return merge(flows, computed=True, how=op or "operator")
        if kind == "XmlExpr":
            label = str(body.get("op", "xml")).removeprefix("IS_").lower()
            return merge((self._expr(v, scope) for v in _children(body)), computed=True, how=f"{label}()")
        label = _LABELS.get(kind or "", (kind or "expression").lower())
        return merge((self._expr(v, scope) for v in _children(body)), computed=True, how=label)

    def _column_ref(self, body: Node, scope: _Scope) -> Flow:
        fields = body.get("fields") or []
        if any("String" not in f for f in fields):
            # `t.*` inside an expression (e.g. count(t.*), row(t.*)): the whole row.
            names = [str(f.get("String", {}).get("sval", "")) for f in fields if "String" in f]
            if not names:
                level = scope.levels[0] if scope.levels else _Level()
                return merge((o.flow for o in level.star_order), computed=True, how="row")
            item = self._find_item(names, scope)
            return (
                item.whole_row() if item is not None else Flow(opaque=f"{'.'.join(names)}.* is not in scope")
            )
        names = [str(f["String"].get("sval", "")) for f in fields]
        if len(names) == 1:
            flow = self._unqualified(names[0], scope)
            if flow is not None:
                return flow
            item = self._find_item(names, scope)
            if item is not None:
                return item.whole_row()  # `c` alone: the whole row of c
            return Flow(opaque=f"column {names[0]} is not in scope")
        # t.c, s.t.c, db.s.t.c: the longest prefix that names a FROM item; the rest are fields.
        for split in range(len(names) - 1, 0, -1):
            item = self._find_item(names[:split], scope)
            if item is not None:
                before = self._calls_made
                flow = self._fields(item, names[split:], scope)
                if self._calls_made == before:
                    self.resolved.add(id(body))
                return flow
        # a.b where a is a column (of a composite type): field selection or the call b(a).
        flow = self._unqualified(names[0], scope)
        if flow is None:
            return Flow(opaque=f"{'.'.join(names)} is not in scope")
        for extra in names[1:]:
            self._call(extra)
            flow = flow.derived(f"{extra}()")
        return flow

    def _fields(self, item: _Item, fields: list[str], scope: _Scope) -> Flow:
        first, rest = fields[0], fields[1:]
        flow = item.column(first) if item.columns is not None else None
        if flow is None:
            # Not a column of the item: attribute notation, the call first(item). When the item's
            # columns are unknown this may also be a column; when in doubt it counts as a call.
            self._call(first)
            flow = item.whole_row().derived(f"{first}()")
            if item.columns is None:
                flow = merge([flow, item.unknown_flow])
        for extra in rest:
            self._call(extra)
            flow = flow.derived(f"{extra}()")
        return flow

    def _indirection(self, body: Node, scope: _Scope) -> Flow:
        before = self._calls_made
        flow = self._indirection_flow(body, scope)
        if self._calls_made == before:
            self.resolved.add(id(body))
        return flow

    def _call(self, name: str) -> None:
        """A field name that is no column: attribute notation, a call of that function."""
        self.field_calls[name] = None
        self._calls_made += 1

    def _indirection_flow(self, body: Node, scope: _Scope) -> Flow:
        arg = body.get("arg")
        kind, inner = _unwrap(arg)
        indirection = body.get("indirection") or ()
        base: _Item | None = None
        if kind == "ColumnRef":
            fields = inner.get("fields") or []
            if len(fields) == 1 and "String" in fields[0]:
                name = fields[0]["String"].get("sval", "")
                if self._unqualified(name, scope) is None:
                    base = self._find_item([name], scope)
        flow = self._expr(arg, scope) if base is None else EMPTY
        for step in indirection:
            if "String" in step:
                name = str(step["String"].get("sval", ""))
                if base is not None:
                    flow = self._fields(base, [name], scope)
                    base = None
                else:
                    # (expr).name: a field of a composite value, or the call name(expr).
                    self._call(name)
                    flow = flow.derived(f"{name}()")
            elif "A_Indices" in step:
                if base is not None:
                    flow, base = base.whole_row(), None
                indices = step["A_Indices"]
                bounds = [self._expr(indices.get(k), scope) for k in ("lidx", "uidx")]
                flow = merge([flow, *bounds], computed=True, how="[]")
            else:  # A_Star: (x).* inside an expression
                if base is not None:
                    flow, base = base.whole_row(), None
        if base is not None:
            flow = base.whole_row()
        return flow

    def _row_ref(self, scope: _Scope) -> Callable[[str], bool]:
        """Whether a bare name is a whole-row reference (a FROM item, not a column) in `scope`."""
        return lambda name: (
            self._unqualified(name, scope) is None and self._find_item([name], scope) is not None
        )

    def _unqualified(self, name: str, scope: _Scope) -> Flow | None:
        for level in scope.levels:
            if name in level.using:
                return level.using[name]
            found = [f for item in level.items if (f := item.column(name)) is not None]
            if found:
                return merge(found)
        return None

    def _find_item(self, names: Sequence[str], scope: _Scope) -> _Item | None:
        """The FROM item `names` qualifies: `t` (alias or relation name) or `s.t`."""
        *schema, name = names
        for level in scope.levels:
            for item in level.items:
                if item.name != name:
                    continue
                if schema and item.schema not in (schema[-1], None):
                    continue
                if schema and item.schema is None:
                    continue
                return item
        return None

    def _func_call(self, body: Node, scope: _Scope) -> Flow:
        parts = tuple(str(p.get("String", {}).get("sval", "")) for p in body.get("funcname") or ())
        name = ".".join(parts)
        args = [self._expr(a, scope) for a in body.get("args") or ()]
        for wrapped in body.get("agg_order") or ():
            args.append(self._expr((wrapped.get("SortBy") or {}).get("node"), scope))
        if body.get("agg_filter"):
            flow = self._expr(body["agg_filter"], scope)
            self.filtered.append(flow)
            args.append(flow)
        if body.get("over"):
            self._window(body["over"], scope)
        if parts[-1] in SET_RETURNING and not _count_is_fixed(
            parts[-1], body.get("args") or [], self._row_ref(scope)
        ):
            # A set-returning call in the select list multiplies rows by what its arguments hold.
            self.filtered.extend(args)
        cls, _ = classify_function(parts)
        if cls is StatementClass.READ and parts[-1] in self.catalog.functions and parts[0] != "pg_catalog":
            # A user-defined function of the allowlisted name: Postgres may call it instead (an
            # overload the built-in lacks wins), and its code is not the built-in's.
            self.hidden_code[f"function {parts[-1]} (a user-defined function has that name)"] = None
            cls = StatementClass.UNKNOWN
        if cls is not StatementClass.READ:
            # The classifier already counts it in the text itself; inside a view nothing else would.
            self.unsafe_calls[name] = None
            # A function Gatehouse cannot see into may read any table: its value is untraceable.
            return Flow(opaque=f"function {name} is not a built-in Gatehouse can trace")
        return merge(args, computed=True, how=f"{parts[-1]}()")

    def _sublink(self, body: Node, scope: _Scope) -> Flow:
        kind, sub = _unwrap(body.get("subselect") or {})
        outputs = self.statement_outputs(kind, sub, scope.levels, scope.ctes)
        value = merge(o.flow for o in outputs)
        link = body.get("subLinkType", "")
        if link == "EXPR_SUBLINK":
            self._first_outputs[id(body)] = outputs[0] if outputs else None
        test = self._expr(body.get("testexpr"), scope)
        if link in ("EXPR_SUBLINK", "ARRAY_SUBLINK", "MULTIEXPR_SUBLINK"):
            return merge([value, test], computed=link == "ARRAY_SUBLINK", how="(SELECT ...)")
        # EXISTS, IN, ANY, ALL: a boolean computed from the subquery's rows.
        return merge([value, test], computed=True, how=link.removesuffix("_SUBLINK").lower())


# -- statements ------------------------------------------------------------------------------------


class LineageEngine:
    """Traces statements against a catalog. One per process; holds a memo of traced views."""

    def __init__(self) -> None:
        self._views: dict[int, _TracedView] = {}
        self._views_of: Catalog | None = None

    def trace(self, text: str, catalog: Catalog) -> list[StatementLineage]:
        """One lineage per statement of `text`, in order (an unparseable text traces to nothing)."""
        if catalog is not self._views_of:
            self._views, self._views_of = {}, catalog
        try:
            tree = json.loads(parse_sql_json(text))
        except (ParseError, ValueError, RecursionError, UnicodeError):
            return []
        cursors: dict[str, StatementLineage] = {}
        out = []
        for raw in tree.get("stmts") or ():
            ((kind, body),) = raw["stmt"].items()
            out.append(self._statement(kind, body, catalog, cursors))
        return out

    def _statement(
        self, kind: str, body: Node, catalog: Catalog, cursors: dict[str, StatementLineage]
    ) -> StatementLineage:
        analyzer = _Analyzer(catalog, self._views)
        returns_rows = True
        opaque = ""
        outputs: list[Output] = []
        try:
            if kind == "SelectStmt":
                outputs = analyzer.select(body, [], {})
            elif kind in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
                outputs = analyzer.statement_outputs(kind, body, [], {})
                returns_rows = bool(
                    (body.get("returningClause") or {}).get("exprs") or body.get("returningList")
                )
            elif kind == "ExplainStmt":
                inner_kind, inner = _unwrap(body.get("query") or {})
                inner_lineage = self._statement(inner_kind or "", inner, catalog, {})
                # A plan shows no row values, but its estimates and (with ANALYZE) counts can
                # reveal what the query filters on: the inner statement's oracles count.
                analyzer.filtered.append(Flow(inner_lineage.filtered))
                analyzer.field_calls.update(dict.fromkeys(inner_lineage.field_calls))
                analyzer.missing.update(dict.fromkeys(inner_lineage.missing))
                analyzer.hidden_code.update(dict.fromkeys(inner_lineage.hidden_code))
                analyzer.too_deep = analyzer.too_deep or bool(inner_lineage.untraceable)
                outputs = [Output("QUERY PLAN", EMPTY, star=True)]
            elif kind == "VariableShowStmt":
                outputs = [Output("*", EMPTY, star=True)]  # settings, not table data
            elif kind == "DeclareCursorStmt":
                inner_kind, inner = _unwrap(body.get("query") or {})
                lineage = self._statement(inner_kind or "", inner, catalog, cursors)
                cursors[str(body.get("portalname", ""))] = lineage
                return StatementLineage(
                    filtered=lineage.filtered,
                    filtered_opaque=lineage.filtered_opaque,
                    field_calls=lineage.field_calls,
                    missing=lineage.missing,
                    hidden_code=lineage.hidden_code,
                    untraceable=lineage.untraceable,
                    referenced=lineage.referenced,
                )
            elif kind == "FetchStmt":
                cursor = cursors.get(str(body.get("portalname", "")))
                if cursor is None:
                    opaque = "FETCH from a cursor declared outside this request"
                else:
                    return StatementLineage(outputs=cursor.outputs, returns_rows=True, opaque=cursor.opaque)
            elif kind in ("PrepareStmt", "CreateTableAsStmt", "CopyStmt", "ViewStmt"):
                inner_kind, inner = _unwrap(body.get("query") or {})
                if inner_kind:
                    analyzer.statement_outputs(inner_kind, inner, [], {})
                returns_rows = kind == "CopyStmt"
                opaque = "COPY" if returns_rows else ""
            elif kind in _NO_ROWS:
                returns_rows = False
            else:
                opaque = f"{kind.removesuffix('Stmt')} returns rows Gatehouse cannot trace"
        except RecursionError:
            opaque = "the statement nests too deep to trace"
            analyzer.too_deep = True
        # Attribute notation anywhere lineage did not resolve to a column is a call: every field
        # selection of the statement is found by a plain walk, whatever clause it sits in.
        for node_id, names in _field_selections(body):
            if node_id not in analyzer.resolved:
                for name in names:
                    analyzer.field_calls.setdefault(name, None)
        filtered = merge(analyzer.filtered)
        return StatementLineage(
            outputs=tuple(outputs),
            returns_rows=returns_rows,
            filtered=filtered.sources,
            filtered_opaque=bool(filtered.opaque),
            field_calls=tuple(analyzer.field_calls),
            missing=tuple(analyzer.missing),
            opaque=opaque,
            referenced=frozenset(analyzer.referenced | {src for o in outputs for src in o.flow.sources}),
            hidden_code=tuple(analyzer.hidden_code),
            untraceable=(
                "the statement nests too deep to trace"
                if analyzer.too_deep
                else "a scalar subquery's column has a name lineage cannot tell"
                if analyzer.unnamed
                else ""
            ),
        )


# -- helpers ---------------------------------------------------------------------------------------

_CONSTANTS = frozenset({"A_Const", "ParamRef", "SQLValueFunction", "Integer", "Float", "String", "Boolean"})
_NO_ROWS = frozenset(
    {
        "TransactionStmt", "VariableSetStmt", "ClosePortalStmt", "DeallocateStmt", "ListenStmt",
        "UnlistenStmt", "NotifyStmt", "LockStmt", "TruncateStmt", "DiscardStmt", "ConstraintsSetStmt",
    }
)  # fmt: skip
_LABELS = {
    "CaseExpr": "CASE",
    "CaseWhen": "CASE",
    "CoalesceExpr": "COALESCE",
    "MinMaxExpr": "GREATEST/LEAST",
    "NullIfExpr": "NULLIF",
    "BoolExpr": "AND/OR",
    "NullTest": "IS NULL",
    "BooleanTest": "IS TRUE",
    "A_ArrayExpr": "ARRAY[]",
    "RowExpr": "ROW()",
    "CollateClause": "COLLATE",
    "JsonObjectConstructor": "JSON_OBJECT()",
    "JsonArrayConstructor": "JSON_ARRAY()",
    "JsonArrayQueryConstructor": "JSON_ARRAY()",
    "JsonObjectAgg": "JSON_OBJECTAGG()",
    "JsonArrayAgg": "JSON_ARRAYAGG()",
    "XmlSerialize": "XMLSERIALIZE()",
    "GroupingFunc": "GROUPING()",
    "GroupingSet": "GROUPING SETS",
}
_SINGLE_COLUMN = frozenset(
    {
        "generate_series", "generate_subscripts", "regexp_matches", "regexp_split_to_table",
        "string_to_table", "json_object_keys", "jsonb_object_keys", "jsonb_path_query",
        "jsonb_path_query_tz",
    }
)  # fmt: skip


_KEYS_OF = frozenset(
    {"json_each", "json_each_text", "jsonb_each", "jsonb_each_text", "json_object_keys", "jsonb_object_keys"}
)
_ROW_TO_JSON = frozenset({"to_json", "to_jsonb", "row_to_json"})


def _field_selections(root: Any) -> list[tuple[int, list[str]]]:
    """Every field selection of a parse tree, by node identity: `t.f`, `s.t.f` (the names after
    the first) and `(x).f` (its field names). Iterative: deep nesting cannot exhaust the stack."""
    found: list[tuple[int, list[str]]] = []
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if type(node) is list:
            stack.extend(node)
            continue
        if type(node) is not dict:
            continue
        column_ref = node.get("ColumnRef")
        if type(column_ref) is dict:
            names = [
                str(f["String"].get("sval", "")) for f in column_ref.get("fields") or () if "String" in f
            ]
            if len(names) >= 2:
                found.append((id(column_ref), names[1:]))
        indirection = node.get("A_Indirection")
        if type(indirection) is dict:
            names = [
                str(i["String"].get("sval", ""))
                for i in indirection.get("indirection") or ()
                if "String" in i
            ]
            if names:
                found.append((id(indirection), names))
        stack.extend(v for v in node.values() if type(v) is dict or type(v) is list)
    return found


def _count_is_fixed(name: str, args: list[Node], is_row: Callable[[str], bool]) -> bool:
    """True when a set-returning call yields a number of rows its arguments' values cannot change:
    `unnest(ARRAY[a, b])` (one row per element written), the keys of `to_json(t)` of a whole row
    (one per column). Anything else may reveal its arguments through how many rows it yields."""
    if name == "unnest":
        return bool(args) and all(_unwrap(a)[0] == "A_ArrayExpr" for a in args)
    if name in _KEYS_OF and len(args) == 1:
        kind, call = _unwrap(args[0])
        if kind == "FuncCall" and _func_name(call) in _ROW_TO_JSON and len(call.get("args") or ()) == 1:
            inner_kind, inner = _unwrap((call.get("args") or [{}])[0])
            fields = inner.get("fields") or [] if inner_kind == "ColumnRef" else []
            # A whole row has one key per column; a json column's keys are its value's.
            return len(fields) == 1 and "String" in fields[0] and is_row(fields[0]["String"].get("sval", ""))
    return False


def _single_column_function(name: str) -> bool:
    return name in _SINGLE_COLUMN


def _unwrap(node: Any) -> tuple[str | None, Node]:
    if type(node) is dict and len(node) == 1:
        key = next(iter(node))
        if key[:1].isupper() and type(node[key]) is dict:
            return key, node[key]
    return None, node if type(node) is dict else {}


def _children(body: Node) -> Iterable[Any]:
    for key, value in body.items():
        if key == "location" or not (type(value) is dict or type(value) is list):
            continue
        yield value


def _names(items: Any) -> list[str]:
    return [str(i.get("String", {}).get("sval", "")) for i in items or () if "String" in i]


def _coldef_names(items: Iterable[Node]) -> list[str]:
    return [str((i.get("ColumnDef") or {}).get("colname", "")) for i in items if "ColumnDef" in i]


def _scalar_names(wrapped: Node) -> bool:
    """True for a function in FROM whose one column takes its name from the function: no column
    definitions, not one of the functions whose columns are listed (SRF_COLUMNS), and not an
    unnest of several arrays."""
    parts = (wrapped.get("List") or {}).get("items") or []
    kind, fn = _unwrap(parts[0] if parts else {})
    if kind != "FuncCall" or (len(parts) > 1 and parts[1]):
        return False
    name = _func_name(fn)
    if name in SRF_COLUMNS:
        return False
    if name == "unnest":
        return len(fn.get("args") or ()) == 1
    return _single_column_function(name)


def _func_name(body: Node) -> str:
    parts = [str(p.get("String", {}).get("sval", "")) for p in body.get("funcname") or ()]
    if len(parts) == 2 and parts[0] == "pg_catalog":
        return parts[1]
    return ".".join(parts)


def _type_name(body: Node) -> str:
    names = _names(body.get("names"))
    return names[-1] if names else "type"


SublinkName = Callable[[Node], "str | None"]


def _figure_name(node: Any, sublink: SublinkName | None = None) -> str:
    """The column name Postgres gives an unnamed output: FigureColname (parser/parse_target.c).

    It must be Postgres' name exactly: a later reference by name (an outer query level, the
    other side of a USING) resolves to what Postgres resolves it to, or lineage would follow a
    column of the same name that is not the one read. `sublink` names a scalar subquery from its
    traced columns (a `*` in it included); without it, from its text.
    """
    _strength, name = _figure(node, sublink or _first_output_name)
    return name or "?column?"


# The names FigureColnameInternal gives constructs that act like functions (strength 2).
_SQL_VALUE_NAMES = {
    "SVFOP_CURRENT_DATE": "current_date",
    "SVFOP_CURRENT_TIME": "current_time",
    "SVFOP_CURRENT_TIME_N": "current_time",
    "SVFOP_CURRENT_TIMESTAMP": "current_timestamp",
    "SVFOP_CURRENT_TIMESTAMP_N": "current_timestamp",
    "SVFOP_LOCALTIME": "localtime",
    "SVFOP_LOCALTIME_N": "localtime",
    "SVFOP_LOCALTIMESTAMP": "localtimestamp",
    "SVFOP_LOCALTIMESTAMP_N": "localtimestamp",
    "SVFOP_CURRENT_ROLE": "current_role",
    "SVFOP_CURRENT_USER": "current_user",
    "SVFOP_USER": "user",
    "SVFOP_SESSION_USER": "session_user",
    "SVFOP_CURRENT_CATALOG": "current_catalog",
    "SVFOP_CURRENT_SCHEMA": "current_schema",
}
_XML_NAMES = {
    "IS_XMLCONCAT": "xmlconcat",
    "IS_XMLELEMENT": "xmlelement",
    "IS_XMLFOREST": "xmlforest",
    "IS_XMLPARSE": "xmlparse",
    "IS_XMLPI": "xmlpi",
    "IS_XMLROOT": "xmlroot",
    "IS_XMLSERIALIZE": "xmlserialize",
}
_NAMED_KINDS = {
    "GroupingFunc": "grouping",
    "A_ArrayExpr": "array",
    "RowExpr": "row",
    "CoalesceExpr": "coalesce",
    "XmlSerialize": "xmlserialize",
}


def _figure(node: Any, sublink: SublinkName) -> tuple[int, str | None]:
    """FigureColnameInternal: (strength, name); strength 2 is a real name, 1 a fallback."""
    kind, body = _unwrap(node)
    if not kind:
        return 0, None
    if kind == "ColumnRef":
        names = _names(body.get("fields"))
        return (2, names[-1]) if names else (0, None)
    if kind == "A_Indirection":
        names = _names(body.get("indirection"))
        return (2, names[-1]) if names else _figure(body.get("arg"), sublink)
    if kind == "FuncCall":
        parts = _names(body.get("funcname"))
        return (2, parts[-1]) if parts else (0, None)
    if kind == "A_Expr":
        return (2, "nullif") if body.get("kind") == "AEXPR_NULLIF" else (0, None)
    if kind == "TypeCast":
        strength, name = _figure(body.get("arg"), sublink)
        if strength <= 1:
            names = _names((body.get("typeName") or {}).get("names"))
            if names:
                return 1, names[-1]
        return strength, name
    if kind == "CollateClause":
        return _figure(body.get("arg"), sublink)
    if kind == "SubLink":
        link = body.get("subLinkType")
        if link == "EXISTS_SUBLINK":
            return 2, "exists"
        if link == "ARRAY_SUBLINK":
            return 2, "array"
        if link == "EXPR_SUBLINK":
            name = sublink(body)
            return (2, name) if name else (0, None)
        return 0, None
    if kind == "CaseExpr":
        strength, name = _figure(body.get("defresult"), sublink)
        return (strength, name) if strength > 1 else (1, "case")
    if kind in _NAMED_KINDS:
        return 2, _NAMED_KINDS[kind]
    if kind == "MinMaxExpr":
        op = {"IS_GREATEST": "greatest", "IS_LEAST": "least"}.get(str(body.get("op")))
        return (2, op) if op else (0, None)
    if kind == "SQLValueFunction":
        named = _SQL_VALUE_NAMES.get(str(body.get("op")))
        return (2, named) if named else (0, None)
    if kind == "XmlExpr":
        named = _XML_NAMES.get(str(body.get("op")))
        return (2, named) if named else (0, None)
    return 0, None


def _first_output_name(sublink: Node) -> str | None:
    """The name of a scalar subquery's one column from its text (its leftmost SELECT's first
    target: the alias, or the name figured from it); None when the text does not tell."""
    kind, body = _unwrap(sublink.get("subselect"))
    while kind == "SelectStmt" and body.get("op") not in (None, "SETOP_NONE"):
        kind, body = _unwrap({"SelectStmt": body.get("larg") or {}})
    if kind != "SelectStmt":
        return None
    targets = body.get("targetList") or []
    if not targets:
        return None
    target = (targets[0] or {}).get("ResTarget") or {}
    if target.get("name"):
        return str(target["name"])
    strength, name = _figure(target.get("val"), _first_output_name)
    return name if strength > 0 else None


def _rename(outputs: list[Output], names: Sequence[str]) -> list[Output]:
    if not names:
        return outputs
    renamed = list(outputs)
    position = 0
    for i, out in enumerate(renamed):
        if out.star or position >= len(names):
            break
        renamed[i] = Output(names[position], out.flow)
        position += 1
    return renamed


def _item_from_outputs(alias: Node | None, outputs: list[Output]) -> _Item:
    alias = alias or {}
    outputs = _rename(outputs, _names(alias.get("colnames")))
    name = alias.get("aliasname")
    if any(o.star for o in outputs):
        return _Item(name=name, columns=None, unknown_flow=merge(o.flow for o in outputs))
    return _Item(name=name, columns=[(o.name, o.flow) for o in outputs])


def _union_outputs(left: list[Output], right: list[Output], *, keep_shape: bool = False) -> list[Output]:
    """Position by position, the flows of two queries whose rows are combined (a set operation).

    With `keep_shape`, a lone `*` on one side (a recursive CTE not traced yet) takes the other
    side's columns, so the shape is not lost while the flows are merged in.
    """
    if keep_shape:
        for star_side, other in ((left, right), (right, left)):
            if len(star_side) == 1 and star_side[0].star and not any(o.star for o in other):
                return [Output(o.name, merge([o.flow, star_side[0].flow])) for o in other]
    if any(o.star for o in left + right) or len(left) != len(right):
        return [Output("*", merge(o.flow for o in left + right), star=True)]
    return [Output(a.name, merge([a.flow, b.flow])) for a, b in zip(left, right, strict=True)]
