"""The prompt templates: each compiled once and rendered in a sandboxed Jinja2 environment
(Jinja2's immutable sandbox, plus caps on a render's loop turns, time and text size), so that a
hostile recipe cannot exhaust the memory or the CPU while `plan` runs.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jinja2 import (
    StrictUndefined,
    TemplateSyntaxError,
    nodes,
    pass_context,
    pass_environment,
    pass_eval_context,
)
from jinja2.filters import make_attrgetter
from jinja2.runtime import Context, LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import Namespace, concat
from jinja2.visitor import NodeTransformer

from seedream_pipe.recipe_file import KeyPath

if TYPE_CHECKING:
    from jinja2 import Template


#: The longest text a template may make, in characters. A real prompt is a few thousand (the
#: model's advice stops at 600 words); the cap is what keeps a template that pads, loops or
#: doubles a string from filling the machine's memory while `plan` runs.
MAX_TEMPLATE_TEXT = 100_000
_TOO_LONG = f"text too long for a template (over {MAX_TEMPLATE_TEXT:,} characters)"
#: str methods whose int arguments are widths: the string they return is that long.
_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


#: A width of 7 digits or more in a format spec: `{:>999999999}` or `%999999999s`.
_HUGE_FORMAT_WIDTH = re.compile(r"\{[^{}]*:[^{}]*\d{7}|%[^a-zA-Z%]*\d{7}")


#: A replacement field whose spec takes a value of its own: `'{:>{}}'.format(a, 10**9)`.
_NESTED_FIELD = re.compile(r"\{[^{}]*\{")
#: A value that, put in a format spec, is a width or precision over MAX_TEMPLATE_TEXT.
_HUGE_NUMBER = re.compile(r"\d{7}")


def _as_text(text: str | bytes) -> str:
    return text if isinstance(text, str) else text.decode("latin-1")


def _refuse_huge_format(text: Any, args: tuple[Any, ...] = ()) -> None:
    if isinstance(text, str | bytes) and (
        _HUGE_FORMAT_WIDTH.search(_as_text(text))
        or (
            ("*" in _as_text(text) or _NESTED_FIELD.search(_as_text(text)))
            and any(_HUGE_NUMBER.search(a) if isinstance(a, str) else isinstance(a, int | float) and abs(a) > MAX_TEMPLATE_TEXT
                    for a in args)
        )
    ):
        raise SecurityError(_TOO_LONG)


def _refuse_width(width: Any) -> None:
    if isinstance(width, int) and width > MAX_TEMPLATE_TEXT:
        raise SecurityError(_TOO_LONG)


def _refuse_long(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_TEMPLATE_TEXT:
        raise SecurityError(_TOO_LONG)
    return value


#: Loop turns and calls one prompt's render may take, and the time. A prompt needs a handful
#: of steps and microseconds; the caps stop nested loops that print nothing (`range(99999)`
#: inside `range(99999)`: 10^10 turns) or a loop over a slow test from keeping `plan` busy.
MAX_TEMPLATE_STEPS = 100_000
MAX_TEMPLATE_SECONDS = 1.0
_TOO_BUSY = (
    f"too much work for a template (over {MAX_TEMPLATE_STEPS:,} loop turns and calls, or "
    f"{MAX_TEMPLATE_SECONDS:g} s, in one prompt)"
)
#: Why a filter Jinja has is not here, said after its "No filter named" (see _Sandbox).
WHY_NOT_HERE = {
    "No filter named 'random'.": "a plan is the same every time it is made, or each run would submit "
    "new jobs and pay again; `sample: {n: N, seed: S}` picks jobs at random, reproducibly",
}
#: Where a render keeps its budget: a key no template can name, holding one object that the
#: contexts derived from the render's (macros, loops) share.
_BUDGET_KEY = "work budget"
#: The filter each loop's iterable goes through (a name templates have no reason to write).
_COUNTED = "_counted_turns"
#: The filter a value the template builds goes through to be measured (see `_parse`).
_MEASURED = "_measured_value"
#: Filters that call a test or a filter once per item: their input is counted item by item.
_PER_ITEM_FILTERS = ("select", "reject", "selectattr", "rejectattr", "map")
#: Filters whose result can be larger than what they were given (escaping, quoting, the text of
#: a list), so repeating them grows a value without bound: their result is measured.
_GROWING_FILTERS = ("e", "escape", "forceescape", "string", "list", "pprint", "tojson", "urlize", "urlencode",
                    "xmlattr", "filesizeformat", "dictsort", "items", "groupby", "center", "indent", "wordwrap",
                    "batch", "slice", "sum", "format", "join", "replace")
#: Filters that make a list of what they are given: a lazy sequence (`map('center', 99999)`)
#: is measured item by item as it is gathered, not once it is all in memory.
_GATHERING_FILTERS = ("list", "sort", "unique", "reverse", "groupby", "dictsort", "items")
#: Tags a prompt has no use for, each a way around the budget (a scoped block renders in a
#: context of its own).
_REFUSED_TAGS = {nodes.Block: "block", nodes.Extends: "extends", nodes.Include: "include",
                 nodes.Import: "import", nodes.FromImport: "from ... import"}  # fmt: skip


def _longest(values: Any) -> int:
    return max((_size(v) for v in values), default=0)


def _replaced_length(text: Any, old: Any, new: Any, count: Any = None) -> int:
    found = len(text) + 1 if old == "" else text.count(old)
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(text) + found * (len(new) - len(old))


def _joined_length(separator: Any, items: list[Any]) -> int:
    return _size(items) + len(separator) * max(0, len(items) - 1)


def _formatted_length(template: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """An upper bound for `template.format(...)` or `template % args`: every field the largest."""
    fields = template.count("{") + template.count("%")
    return len(template) + fields * _longest((*args, *kwargs.values()))


def _refuse_size(length: int) -> None:
    if length > MAX_TEMPLATE_TEXT:
        raise SecurityError(_TOO_LONG)


#: The most digits an integer a template computes may have (`9**100` has 96).
MAX_TEMPLATE_DIGITS = 10_000
_MAX_BITS = int(MAX_TEMPLATE_DIGITS * 3.33)
_TOO_BIG_NUMBER = f"number too large for a template (over {MAX_TEMPLATE_DIGITS:,} digits)"


def _size(value: Any, limit: int = MAX_TEMPLATE_TEXT) -> int:
    """A value's size: characters of its strings plus items of its lists, tuples, sets, dicts
    and namespaces, nested ones counted each time they are held, so a list holding one big list
    99,999 times is as big as its text would be. Counting stops past `limit` (so a value of any
    size costs at most `limit` steps to measure) and returns `limit + 1`."""
    if isinstance(value, str | bytes):
        return len(value)
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, list | tuple | set | frozenset | dict):
            total += len(item)
            if total > limit:
                return limit + 1
            stack.extend(item)
            if isinstance(item, dict):
                stack.extend(item.values())
        elif isinstance(item, Namespace):
            stack.append(item._Namespace__attrs)
        elif isinstance(item, int) and item.bit_length() > 64:
            total += item.bit_length() // 3
        if total > limit:
            return limit + 1
    return total


def _refuse_big(value: Any) -> Any:
    """The value, refused when its text would be over MAX_TEMPLATE_TEXT (see `_size`)."""
    if isinstance(value, str):
        if len(value) > MAX_TEMPLATE_TEXT:
            raise SecurityError(_TOO_LONG)
    elif isinstance(value, bytes | list | tuple | set | frozenset | dict | Namespace) and _size(value) > MAX_TEMPLATE_TEXT:
        raise SecurityError(_TOO_LONG)
    return value


def _refuse_count(count: Any, *, each: Any = None) -> None:
    """A filter argument that is a number of items made (`slice(10**8)`), each maybe `each`."""
    if isinstance(count, int) and count * max(1, _size(each) if each is not None else 1) > MAX_TEMPLATE_TEXT:
        raise SecurityError(_TOO_LONG)


class _Budget:
    __slots__ = ("deadline", "steps")

    def __init__(self) -> None:
        self.steps = 0
        self.deadline = time.monotonic() + MAX_TEMPLATE_SECONDS


def _fresh_budget(scope: dict[str, Any]) -> dict[str, Any]:
    scope[_BUDGET_KEY] = _Budget()
    return scope


def _step(context: Context) -> None:
    budget = context.get(_BUDGET_KEY)
    if not isinstance(budget, _Budget):  # a template rendered some other way: count from here
        budget = context.vars[_BUDGET_KEY] = _Budget()
    budget.steps += 1
    if budget.steps > MAX_TEMPLATE_STEPS or time.monotonic() > budget.deadline:
        raise SecurityError(_TOO_BUSY)


@pass_context
def _counted(context: Context, iterable: Any) -> Iterator[Any]:
    """A loop's iterable, each turn counted against the render's budget."""
    for item in iterable:
        _step(context)
        yield item


def _counting_input(filter_fn: Any) -> Any:
    @pass_context
    def counted(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        return filter_fn(context, _counted(context, value), *args, **kwargs)

    return counted


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, also refusing what would exhaust memory: string/list products
    and powers (`{{ 'a' * 10**10 }}`), padding to huge widths (`{{ a|center(10**9) }}`), and
    strings grown past MAX_TEMPLATE_TEXT by a loop, a namespace or a recursive macro; and what
    would take the CPU for good: more than MAX_TEMPLATE_STEPS loop turns and calls, or
    MAX_TEMPLATE_SECONDS, in one render."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters[_COUNTED] = _counted
        self.filters[_MEASURED] = _refuse_big
        for name in _PER_ITEM_FILTERS:  # (each takes the context first: @pass_context)
            self.filters[name] = _counting_input(self.filters[name])
        for name in ("center", "indent"):
            self.filters[name] = _width_checked(self.filters[name])
        printf = self.filters["format"]

        def format_checked(value: Any, *args: Any, **kwargs: Any) -> Any:
            _refuse_huge_format(value, args)
            if isinstance(value, str):
                _refuse_size(_formatted_length(value, args, kwargs))
            return printf(value, *args, **kwargs)

        self.filters["format"] = format_checked
        replace, join = self.filters["replace"], self.filters["join"]

        @pass_eval_context
        def replace_checked(eval_ctx: Any, text: Any, old: Any, new: Any, count: Any = None) -> Any:
            if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
                _refuse_size(_replaced_length(text, old, new, count))
            return replace(eval_ctx, text, old, new, count)

        @pass_eval_context
        def join_checked(eval_ctx: Any, value: Any, d: Any = "", attribute: Any = None) -> Any:
            items = _gathered(value)  # (do_join makes a list of it anyway)
            if attribute is not None:
                items, attribute = list(map(make_attrgetter(eval_ctx.environment, attribute), items)), None
            if isinstance(d, str):
                _refuse_size(_joined_length(d, items))
            return _refuse_long(join(eval_ctx, items, d, attribute))

        self.filters["replace"], self.filters["join"] = replace_checked, join_checked
        self._check_sizes()
        # A prompt has no use for placeholder text, and `lipsum(n=10**7)` took minutes.
        del self.globals["lipsum"]
        # A plan is the same every time it is made: a prompt drawn by `random` would be a new job
        # (a new job_id) at each run, submitted and paid for again. `sample:` draws from a seed.
        del self.filters["random"]

    def _check_sizes(self) -> None:
        """Filters whose cost or result is driven by an argument (a count, a width, a string put
        between pieces) are refused before they start when it would be over MAX_TEMPLATE_TEXT;
        the others that can make a bigger value than they were given are checked on the result."""
        filters = self.filters
        batch, slice_, indent, wordwrap = filters["batch"], filters["slice"], filters["indent"], filters["wordwrap"]
        total, rounded = filters["sum"], filters["round"]

        def batch_checked(value: Any, linecount: Any, fill_with: Any = None) -> Any:
            if fill_with is not None:
                _refuse_count(linecount, each=fill_with)
            return batch(value, linecount, fill_with)

        @pass_eval_context
        def slice_checked(eval_ctx: Any, value: Any, slices: Any, fill_with: Any = None) -> Any:
            _refuse_count(slices, each=fill_with)
            return slice_(eval_ctx, value, slices, fill_with)

        def indent_checked(text: Any, width: Any = 4, first: bool = False, blank: bool = False) -> Any:
            _refuse_width(width)
            if isinstance(text, str) and isinstance(width, str):
                _refuse_size(len(text) + (text.count("\n") + 1) * len(width))
            return indent(text, width, first, blank)

        @pass_environment
        def wordwrap_checked(environment: Any, text: Any, width: Any = 79, *args: Any, **kwargs: Any) -> Any:
            wrapstring = kwargs.get("wrapstring", args[1] if len(args) > 1 else None)
            if isinstance(text, str) and isinstance(width, int):
                lines = len(text) // max(width, 1) + text.count("\n") + 1
                _refuse_size(len(text) + lines * len(wrapstring if isinstance(wrapstring, str) else "\n"))
            return wordwrap(environment, text, width, *args, **kwargs)

        @pass_environment
        def sum_checked(environment: Any, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
            if isinstance(start, list | tuple):  # (Python's sum refuses strings itself)
                # concatenation: each addition copies what came before (100,000 one-item lists
                # took minutes), so the pieces are measured first and joined in one go
                pieces = _gathered(iterable) if attribute is None else list(map(make_attrgetter(environment, attribute), iterable))
                _refuse_size(_size(start) + _size(pieces))
                if all(type(piece) is type(start) for piece in pieces):
                    return type(start)(itertools.chain(start, *pieces))
                return total(environment, pieces, None, start)
            return total(environment, iterable, attribute, start)

        def round_checked(value: Any, precision: Any = 0, method: Any = "common") -> Any:
            if isinstance(precision, int) and abs(precision) > MAX_TEMPLATE_DIGITS:
                raise SecurityError(_TOO_BIG_NUMBER)  # round(5, -10**9) computes 10**(10**9)
            return rounded(value, precision, method)

        filters.update(batch=batch_checked, slice=slice_checked, indent=indent_checked, wordwrap=wordwrap_checked,
                       sum=sum_checked, round=round_checked)
        for name in _GROWING_FILTERS:
            filters[name] = _result_checked(filters[name])
        for name in _GATHERING_FILTERS:
            filters[name] = _gathering(filters[name])

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """The template's tree, each `for` loop's iterable passed through `_counted`; a tag in
        _REFUSED_TAGS is a syntax error at its line."""
        tree = super()._parse(source, name, filename)
        for kind, tag in _REFUSED_TAGS.items():
            for node in tree.find_all(kind):
                raise TemplateSyntaxError(f"{{% {tag} %}} has no use in a prompt template", node.lineno, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, _COUNTED, [], [], None, None, lineno=loop.lineno)
        # What makes a value that holds others several times over, with no call to check: `~`,
        # a list, tuple or dict written with variables in it (`[a, a, a, a]` of `[b, b, b, b]`
        # ...), and `{% set s %}{{ s }}{{ s }}{% endset %}`. Written in the source, each only
        # multiplies by a few, but one after another they multiply without bound.
        _Measured().visit(tree)
        for block in tree.find_all(nodes.AssignBlock):
            block.filter = nodes.Filter(block.filter, _MEASURED, [], [], None, None, lineno=block.lineno)
        return tree

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _step(__context)  # a macro that calls itself: work without a `for`
        if isinstance(__obj, LoopContext) and args:  # `loop(children)` in a recursive loop
            args = (_counted(__context, args[0]), *args[1:])
        bound = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        text: Any = getattr(bound, "__self__", None)
        if isinstance(text, str | bytes):  # (`'a'.encode()` has the same methods)
            method = bound.__name__
            if method in _PADDING_METHODS:
                for arg in (*args, *kwargs.values()):
                    _refuse_width(arg)
                if method == "expandtabs":  # each tab becomes up to tabsize spaces
                    tabsize = args[0] if args else kwargs.get("tabsize", 8)
                    if isinstance(tabsize, int):
                        _refuse_size(len(text) + _as_text(text).count("\t") * tabsize)
            elif method == "format":
                _refuse_huge_format(text, (*args, *kwargs.values()))
                _refuse_size(_formatted_length(text, args, kwargs))
            elif method == "format_map":
                if args and isinstance(args[0], Mapping):
                    _refuse_huge_format(text, tuple(args[0].values()))
                    _refuse_size(_formatted_length(text, (), args[0]))
            elif method == "replace" and len(args) >= 2 and all(isinstance(a, str | bytes) for a in args[:2]):
                _refuse_size(_replaced_length(text, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count")))
            elif method == "join" and args:
                args = (list(args[0]), *args[1:])
                _refuse_size(_joined_length(text, args[0]))
            elif method == "translate" and args and isinstance(args[0], Mapping):
                # each character may become one of the table's strings
                _refuse_size(len(text) * max(1, _longest(args[0].values())))
        # a macro called with ever longer arguments (recursion that doubles a string)
        for arg in (*args, *kwargs.values()):
            _refuse_long(arg)
        # (`{}.fromkeys(range(99999), big)` or `dict(...)` holding one big value many times)
        return _refuse_big(super().call(__context, __obj, *args, **kwargs))

    def getattr(self, obj: Any, attribute: str) -> Any:
        # `{% set ns.s = ns.s ~ ns.s %}` in a loop doubles a string without any call
        return _refuse_long(super().getattr(obj, attribute))

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "+":
            if isinstance(left, list | tuple | str | bytes) and isinstance(right, list | tuple | str | bytes):
                # `{% set ns.l = ns.l + ns.l %}` in a loop doubles a list each turn
                _refuse_size(_size(left) + _size(right))
            return left + right
        if operator == "**" and isinstance(right, int | float) and abs(right) > 100:
            raise SecurityError("exponent too large for a template")
        if operator in ("*", "**") and isinstance(left, int) and isinstance(right, int):
            # a product of big numbers is as long as both, a power as long as the base times the
            # exponent: `(((9**100)**100)**100)**100` has 95 million digits
            bits = left.bit_length() * abs(right) if operator == "**" else left.bit_length() + right.bit_length()
            if bits > _MAX_BITS:
                raise SecurityError(_TOO_BIG_NUMBER)
        if operator == "%" and isinstance(left, str | bytes):  # printf-style formatting
            values = right if isinstance(right, tuple) else (right,)
            _refuse_huge_format(_as_text(left), values)
            _refuse_size(_formatted_length(_as_text(left), values, right if isinstance(right, Mapping) else {}))
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | bytes | list | tuple)
                    and isinstance(times, int)
                    and _size(seq) * times > MAX_TEMPLATE_TEXT
                ):
                    raise SecurityError("repetition too large for a template")
        return super().call_binop(context, operator, left, right)


class _Measured(NodeTransformer):
    """Passes each list, tuple or dict written with variables in it, and each `~`, through
    `_MEASURED` (constants alone are as big as the source)."""

    def _measure(self, node: nodes.Node) -> nodes.Node:
        self.generic_visit(node)
        if all(isinstance(n, _CONSTANT_NODES) for n in node.find_all(nodes.Node)):
            return node
        return nodes.Filter(node, _MEASURED, [], [], None, None, lineno=node.lineno)

    visit_Concat = visit_List = visit_Dict = _measure

    def visit_Tuple(self, node: nodes.Tuple) -> nodes.Node:
        return self._measure(node) if node.ctx == "load" else self.generic_visit(node)


_CONSTANT_NODES = (nodes.Const, nodes.Pair, nodes.List, nodes.Tuple, nodes.Dict)


def _result_checked(filter_fn: Any) -> Any:
    """The filter, its result refused when over MAX_TEMPLATE_TEXT (a list by `_size`); a result
    that is a lazy sequence (`batch`, `slice`) is refused once it has made that many items."""

    def checked(*args: Any, **kwargs: Any) -> Any:
        result = filter_fn(*args, **kwargs)
        if isinstance(result, Iterator):
            return _counted_items(result)
        return _refuse_big(result)

    for attr in ("jinja_pass_arg",):  # keep @pass_context / @pass_environment
        if hasattr(filter_fn, attr):
            setattr(checked, attr, getattr(filter_fn, attr))
    return checked


def _gathered(items: Any) -> Any:
    """A lazy sequence made a list, refused as soon as it is over MAX_TEMPLATE_TEXT (see
    `_size`); anything else as it is (it was measured when it was made)."""
    if not isinstance(items, Iterator):
        return list(items)
    gathered = []
    total = 0
    for item in items:
        total += 1 + _size(item)
        if total > MAX_TEMPLATE_TEXT:
            raise SecurityError(_TOO_LONG)
        gathered.append(item)
    return gathered


def _gathering(filter_fn: Any) -> Any:
    """The filter, a lazy sequence it is given gathered by `_gathered` first."""
    skip = 1 if hasattr(filter_fn, "jinja_pass_arg") else 0  # (the context or environment)

    def gathering(*args: Any, **kwargs: Any) -> Any:
        if len(args) > skip and isinstance(args[skip], Iterator):
            args = (*args[:skip], _gathered(args[skip]), *args[skip + 1 :])
        return filter_fn(*args, **kwargs)

    if skip:
        gathering.jinja_pass_arg = filter_fn.jinja_pass_arg  # type: ignore[attr-defined]
    return gathering


def _counted_items(items: Iterator[Any]) -> Iterator[Any]:
    for count, item in enumerate(items, 1):
        if count > MAX_TEMPLATE_TEXT:
            raise SecurityError(_TOO_LONG)
        yield item


def _width_checked(filter_fn: Any) -> Any:
    def checked(value: Any, *args: Any, **kwargs: Any) -> Any:
        for arg in (*args[:1], kwargs.get("width")):  # the width: first argument or by name
            _refuse_width(arg)
        return filter_fn(value, *args, **kwargs)

    return checked


def _capped(chunks: Iterator[str]) -> Iterator[str]:
    """A render's pieces, refused once together they pass MAX_TEMPLATE_TEXT (a loop that prints)."""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > MAX_TEMPLATE_TEXT:
            raise SecurityError(_TOO_LONG)
        yield chunk


def template_environment() -> _Sandbox:
    """The sandboxed environment prompts render in: undefined variables are errors."""
    return _Sandbox(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
    )


SANDBOX = template_environment()


def template_line(exc: BaseException) -> int | None:
    """The template line a render error happened on (Jinja2 rewrites the traceback to it)."""
    if hasattr(exc, "template_line"):
        return exc.template_line
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


@dataclass
class PromptTemplate:
    """One prompt template, compiled, with the names it uses."""

    name: str
    source: str
    key_path: KeyPath
    compiled: Template
    uses: frozenset[str]
    tree: nodes.Template
    optional: frozenset[str] = frozenset()  # names it guards (`x | default(...)`, `x is defined`)

    def __post_init__(self) -> None:
        self._globals = dict(self.compiled.globals)

    def render(self, scope: Mapping[str, Any]) -> str:
        # The fast path builds the context from a plain dict: Template.render merges, and Context
        # lists, a ChainMap of globals per call, the biggest cost of a 100,000-job plan. On error,
        # render again through Template.render, which rewrites the traceback to template lines.
        parent = self._globals.copy()
        parent.update(scope)
        compiled = self.compiled
        env = compiled.environment
        try:
            context = env.context_class(env, _fresh_budget(parent), compiled.name, compiled.blocks)
            return concat(_capped(compiled.root_render_func(context)))
        except SecurityError as exc:
            if exc.args == (_TOO_BUSY,):
                # Not rendered again for Jinja2 to rewrite the traceback: that would spend the
                # whole budget twice. The line is mapped here from the compiled code's instead.
                line = template_line(exc)
                exc.template_line = compiled.get_corresponding_lineno(line) if line else None  # type: ignore[attr-defined]
                raise
            return concat(_capped(compiled.generate(_fresh_budget(dict(scope)))))
        except Exception:
            return concat(_capped(compiled.generate(_fresh_budget(dict(scope)))))
