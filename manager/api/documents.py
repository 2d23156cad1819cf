"""Parsing, limits and validation of GraphQL documents, cached per query text.

A document is parsed with a bound on its tokens, measured (depth with every
fragment expanded, aliases counted through fragments), then validated
against the schema, with introspection refused when it is switched off.
Clients send the same few query texts again and again, so the outcome,
valid document or errors, is kept in a small LRU cache: a repeated query
costs a dictionary lookup instead of a parse and a validation.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    parse,
    specified_rules,
    validate,
)
from graphql.validation import NoSchemaIntrospectionCustomRule

from manager.api.errors import PARSE_FAILED, VALIDATION_FAILED, coded_error
from manager.config import ApiSettings

# Lexical tokens in one document; far above any real query, far below what
# would make parsing expensive.
MAX_TOKENS = 20_000

# Introspection queries nest type references deeply (GraphiQL's own query
# is 15 levels), so their fields have a bound of their own instead of
# max_depth; they are refused altogether when introspection is off.
INTROSPECTION = frozenset({"__schema", "__type"})
INTROSPECTION_DEPTH = 20

# Documents remembered, and the longest query text worth remembering.
CACHE_ENTRIES = 512
MAX_CACHED_LENGTH = 16 * 1024


@dataclass(frozen=True)
class PreparedDocument:
    """A document ready to execute, or the errors that stop it."""

    document: DocumentNode | None
    errors: list[GraphQLError] = field(default_factory=list)
    operations: Mapping[str | None, OperationType] = field(default_factory=dict)


class DocumentCache:
    """Prepares query texts for one schema and one set of limits."""

    def __init__(self, schema: GraphQLSchema, limits: ApiSettings) -> None:
        self.schema = schema
        self.limits = limits
        self.rules = list(specified_rules)
        if not limits.introspection:
            self.rules.append(NoSchemaIntrospectionCustomRule)
        self.entries: OrderedDict[str, PreparedDocument] = OrderedDict()

    def prepare(self, query: str) -> PreparedDocument:
        prepared = self.entries.get(query)
        if prepared is not None:
            self.entries.move_to_end(query)
            return prepared
        prepared = self._prepare(query)
        if len(query) <= MAX_CACHED_LENGTH:
            self.entries[query] = prepared
            if len(self.entries) > CACHE_ENTRIES:
                self.entries.popitem(last=False)
        return prepared

    def _prepare(self, query: str) -> PreparedDocument:
        try:
            document = parse(query, max_lexical_tokens=MAX_TOKENS)
        except GraphQLError as error:
            return PreparedDocument(None, [_recoded(error, PARSE_FAILED)])

        problem = self._measure(document)
        if problem is not None:
            return PreparedDocument(None, [problem])

        errors = validate(
            self.schema,
            document,
            self.rules,
            max_errors=20,
            # Suggestions would reveal field names that introspection hides.
            hide_suggestions=not self.limits.introspection,
        )
        if errors:
            return PreparedDocument(
                None, [_recoded(error, VALIDATION_FAILED) for error in errors]
            )
        operations = {
            (node.name.value if node.name else None): node.operation
            for node in document.definitions
            if isinstance(node, OperationDefinitionNode)
        }
        return PreparedDocument(document, [], operations)

    def _measure(self, document: DocumentNode) -> GraphQLError | None:
        measure = Measure(document, self.limits.max_depth)
        for node in document.definitions:
            if not isinstance(node, OperationDefinitionNode):
                continue
            depth = measure.depth(node.selection_set, self.limits.max_depth)
            if depth > self.limits.max_depth:
                return coded_error(
                    f"query is nested deeper than {self.limits.max_depth} levels",
                    VALIDATION_FAILED,
                    limit="max_depth",
                )
            aliases = measure.aliases(node.selection_set)
            if aliases > self.limits.max_aliases:
                return coded_error(
                    f"query uses {aliases} aliases, more than the "
                    f"{self.limits.max_aliases} allowed",
                    VALIDATION_FAILED,
                    limit="max_aliases",
                )
        return None


class Measure:
    """Depth and alias counts of selections, with fragments expanded.

    Fragment results are remembered, so a fragment spread many times (or
    fragments spreading each other in a fan) is measured once, and a
    fragment cycle, which validation rejects anyway, counts as empty.
    """

    def __init__(self, document: DocumentNode, limit: int) -> None:
        self.limit = limit
        self.fragments = {
            node.name.value: node
            for node in document.definitions
            if isinstance(node, FragmentDefinitionNode)
        }
        self.fragment_depths: dict[str, int] = {}
        self.fragment_aliases: dict[str, int] = {}
        self.visiting: set[str] = set()

    def depth(self, selections: SelectionSetNode, limit: int) -> int:
        """Levels of fields below `selections`, stopping once past `limit`."""
        deepest = 0
        for node in selections.selections:
            level = 0
            if isinstance(node, FieldNode) and node.name.value in INTROSPECTION:
                level = self._introspection_level(node, limit)
            elif isinstance(node, FieldNode):
                level = 1
                if node.selection_set is not None and limit > 1:
                    level += self.depth(node.selection_set, limit - 1)
                elif node.selection_set is not None:
                    # Already past the limit: no need to look any deeper.
                    level += 1
            elif isinstance(node, InlineFragmentNode):
                level = self.depth(node.selection_set, limit)
            elif isinstance(node, FragmentSpreadNode):
                level = self._fragment_depth(node.name.value)
            deepest = max(deepest, level)
            if deepest > limit:
                break
        return deepest

    def _introspection_level(self, node: FieldNode, limit: int) -> int:
        """One level when within its own bound, else past any limit."""
        if node.selection_set is None:
            return 1
        below = self.depth(node.selection_set, INTROSPECTION_DEPTH)
        return 1 if below <= INTROSPECTION_DEPTH else limit + 1

    def _fragment_depth(self, name: str) -> int:
        if name in self.fragment_depths:
            return self.fragment_depths[name]
        fragment = self.fragments.get(name)
        if fragment is None or name in self.visiting:
            return 0
        self.visiting.add(name)
        # Measured against the whole limit, not what is left where it is
        # spread, so the remembered depth is exact wherever it is used next.
        depth = self.depth(fragment.selection_set, self.limit)
        self.visiting.discard(name)
        self.fragment_depths[name] = depth
        return depth

    def aliases(self, selections: SelectionSetNode) -> int:
        count = 0
        for node in selections.selections:
            if isinstance(node, FieldNode):
                count += node.alias is not None
                if node.selection_set is not None:
                    count += self.aliases(node.selection_set)
            elif isinstance(node, InlineFragmentNode):
                count += self.aliases(node.selection_set)
            elif isinstance(node, FragmentSpreadNode):
                count += self._fragment_aliases(node.name.value)
        return count

    def _fragment_aliases(self, name: str) -> int:
        if name in self.fragment_aliases:
            return self.fragment_aliases[name]
        fragment = self.fragments.get(name)
        if fragment is None or name in self.visiting:
            return 0
        self.visiting.add(name)
        count = self.aliases(fragment.selection_set)
        self.visiting.discard(name)
        self.fragment_aliases[name] = count
        return count


def _recoded(error: GraphQLError, code: str) -> GraphQLError:
    return GraphQLError(
        error.message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        extensions={"code": code},
    )
