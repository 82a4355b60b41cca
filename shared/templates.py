"""Compilation, checking and rendering of email templates in a Jinja2 sandbox."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from inscriptis import get_text
from inscriptis.model.config import ParserConfig
from jinja2 import StrictUndefined, Template, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from shared.definitions import Email
from shared.errors import PermanentError

ROOT_NAMES = ("contact", "content")
BASE_CONTACT_FIELDS = ("contact_id", "email", "firstname", "lastname", "unsubscribed")
CONTENT_FIELDS = (
    "sender_name",
    "sender_address",
    "postal_address",
    "subscription_center_url",
)
REQUIRED_IN_LIVE_EMAIL = ("subscription_center_url", "postal_address")
GUARDING_FILTERS = {"default", "d"}
_LINE_BREAKS = re.compile(r"[\r\n\v\f\x85\u2028\u2029]+")

_html_env = SandboxedEnvironment(autoescape=True, undefined=StrictUndefined)
_plain_env = SandboxedEnvironment(autoescape=False, undefined=StrictUndefined)
# Templates see only 'contact' and 'content': Jinja's globals (range, lipsum,
# cycler and the like) are removed, so a template cannot print a function.
for _environment in (_html_env, _plain_env):
    _environment.globals.clear()
# Filters and methods that reach around the attribute checks, and tags that
# need a template loader, which these environments do not have.
FORBIDDEN_FILTERS = {"attr"}
FORBIDDEN_METHODS = {"format", "format_map"}
FORBIDDEN_TAGS = (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)


class RenderError(PermanentError):
    """Raised when a template cannot be rendered for one contact."""


@dataclass(frozen=True)
class TemplateProblem:
    part: str
    message: str
    severity: Literal["error", "warning"] = "error"


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: str
    text: str

    def with_html(self, html: str) -> RenderedEmail:
        return RenderedEmail(self.subject, html, self.text)


class CompiledEmail:
    """An email definition with its templates parsed once, ready to render."""

    def __init__(self, email: Email) -> None:
        self.name = email.name
        self.subject = _plain_env.from_string(email.subject)
        self.html = _html_env.from_string(email.html)
        self.text = (
            _plain_env.from_string(email.text)
            if email.text
            else _derived_text(email.html)
        )

    def render(
        self, contact: Mapping[str, Any], content: Mapping[str, Any]
    ) -> RenderedEmail:
        context = {"contact": contact, "content": content}
        try:
            subject = one_line(self.subject.render(context))
            html = self.html.render(context)
            text = self.text.render(context) if self.text else html_to_text(html)
        except (UndefinedError, SecurityError) as error:
            raise RenderError(
                f"email {self.name!r} cannot be rendered: {error}"
            ) from error
        except Exception as error:
            raise RenderError(
                f"email {self.name!r} cannot be rendered: "
                f"{type(error).__name__}: {error}"
            ) from error
        return RenderedEmail(subject=subject, html=html, text=text)


def _derived_text(html_source: str) -> Template | None:
    """Derive the text template from the HTML template once, so that no send
    pays for an HTML-to-text conversion. Returns None when the derived text is
    no valid template (markup inside a template tag, say); each render then
    converts its own HTML."""
    try:
        return _plain_env.from_string(html_to_text(html_source))
    except TemplateSyntaxError:
        return None


def one_line(value: str) -> str:
    """Collapse line breaks so that no rendered value can start a new header."""
    if value.isprintable():
        # No line break is printable, so there is none to collapse.
        return value.strip()
    return _LINE_BREAKS.sub(" ", value).strip()


_TEXT_CONFIG = ParserConfig(display_links=True)


def html_to_text(html: str) -> str:
    """Derive the plain-text part, keeping each link's address after its text."""
    return get_text(html, _TEXT_CONFIG).strip() + "\n"


def check_email_templates(
    email: Email, known_contact_fields: set[str] | None
) -> list[TemplateProblem]:
    """List every template problem of an email; an empty list means clean."""
    problems: list[TemplateProblem] = []
    parts = {"subject": email.subject, "html": email.html}
    if email.text is not None:
        parts["text"] = email.text

    used_content: dict[str, set[str]] = {}
    for part, source in parts.items():
        env = _html_env if part == "html" else _plain_env
        try:
            tree = env.parse(source)
        except TemplateSyntaxError as error:
            problems.append(
                TemplateProblem(
                    part,
                    f"template syntax error on line {error.lineno}: {error.message}",
                )
            )
            continue
        problems.extend(_check_tree(part, tree, known_contact_fields))
        used_content[part] = {
            attribute for root, attribute, _ in _attributes(tree) if root == "content"
        }

    if email.status == "live":
        problems.extend(_check_required_links(used_content))
    return problems


def _check_tree(
    part: str, tree: nodes.Template, known_fields: set[str] | None
) -> Iterator[TemplateProblem]:
    for name in sorted(meta.find_undeclared_variables(tree) - set(ROOT_NAMES)):
        hint = _did_you_mean(name, ROOT_NAMES)
        yield TemplateProblem(
            part,
            f"unknown name {name!r}{hint}; templates can use 'contact' and 'content'",
        )
    yield from _check_forbidden(part, tree)
    attributes = list(_attributes(tree))
    for root, attribute, guarded in attributes:
        if attribute.startswith("_"):
            yield TemplateProblem(
                part,
                f"'{root}.{attribute}' is not allowed: "
                "templates cannot reach Python internals",
            )
        elif root == "content" and attribute not in CONTENT_FIELDS:
            hint = _did_you_mean(attribute, CONTENT_FIELDS)
            yield TemplateProblem(
                part,
                f"unknown content field {attribute!r}{hint}; content fields are "
                + ", ".join(CONTENT_FIELDS),
            )
        elif (
            root == "contact"
            and known_fields is not None
            and not guarded
            and attribute not in known_fields
        ):
            hint = _did_you_mean(attribute, sorted(known_fields))
            yield TemplateProblem(
                part,
                f"unknown contact field {attribute!r}{hint}; import contacts with "
                "that column, or write {{ contact."
                + attribute
                + ' | default("...") }}',
            )
    if known_fields is not None:
        yield from _check_guarded_fields(part, attributes, known_fields)


def _check_guarded_fields(
    part: str, attributes: list[tuple[str, str, bool]], known_fields: set[str]
) -> Iterator[TemplateProblem]:
    """Warn once per unknown contact field that is always guarded but close to
    a known one: every contact still renders, but a typo hides the value."""
    unguarded = {
        attribute
        for root, attribute, guarded in attributes
        if root == "contact" and not guarded
    }
    warned: set[str] = set()
    for root, attribute, _ in attributes:
        if (
            root != "contact"
            or attribute in known_fields
            or attribute in unguarded
            or attribute in warned
        ):
            continue
        match = _near_miss(attribute, known_fields)
        if match is not None:
            warned.add(attribute)
            yield TemplateProblem(
                part,
                f"no imported contact has the field {attribute!r} "
                f"(did you mean {match!r}?), so every email treats it as missing",
                severity="warning",
            )


def _near_miss(name: str, known: set[str]) -> str | None:
    """Return the known field that `name` most likely misspells: the same
    apart from case, or very close (a letter or two) to it."""
    for field in sorted(known):
        if field.lower() == name.lower():
            return field
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
    return close[0] if close else None


def _check_forbidden(part: str, tree: nodes.Template) -> Iterator[TemplateProblem]:
    for tag in tree.find_all(FORBIDDEN_TAGS):
        name = type(tag).__name__.lower()
        yield TemplateProblem(
            part, f"line {tag.lineno}: the {name!r} tag is not available in emails"
        )
    for applied in tree.find_all(nodes.Filter):
        if applied.name in FORBIDDEN_FILTERS:
            yield TemplateProblem(
                part,
                f"line {applied.lineno}: the {applied.name!r} filter is not allowed; "
                "write contact.FIELD instead",
            )
    for call in tree.find_all(nodes.Call):
        method = call.node
        if isinstance(method, nodes.Getattr) and method.attr in FORBIDDEN_METHODS:
            yield TemplateProblem(
                part,
                f"line {call.lineno}: the {method.attr!r} method is not allowed; "
                "use {{ ... }} expressions or the 'format' filter",
            )


def _check_required_links(used: dict[str, set[str]]) -> Iterator[TemplateProblem]:
    for part in ("html", "text"):
        if part not in used:
            continue
        for field in REQUIRED_IN_LIVE_EMAIL:
            if field not in used[part]:
                yield TemplateProblem(
                    part,
                    f"a live email must contain {{{{ content.{field} }}}} "
                    f"in its {part} part, so that every recipient can unsubscribe "
                    "and see the sender's postal address",
                )


def _attributes(tree: nodes.Template) -> Iterator[tuple[str, str, bool]]:
    """Yield (root, attribute, guarded) for each `contact.x` or `content.x`.

    An attribute is guarded when a `default` filter or an `is defined` test
    wraps it, or when it sits inside `{% if contact.x is defined %}`, so a
    contact without that field still renders.
    """
    guarded: set[int] = set()
    for wrapper in tree.find_all((nodes.Filter, nodes.Test)):
        if wrapper.name in GUARDING_FILTERS or wrapper.name == "defined":
            guarded.add(id(wrapper.node))
    for branch in tree.find_all(nodes.If):
        tested = _tested_defined(branch.test)
        for statement in branch.body:
            for node in statement.find_all((nodes.Getattr, nodes.Getitem)):
                if _root_and_attribute(node) in tested:
                    guarded.add(id(node))
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        found = _root_and_attribute(node)
        if found is not None:
            yield found[0], found[1], id(node) in guarded
            continue
        attribute = _attribute_name(node)
        if attribute is not None and attribute.startswith("_"):
            yield "value", attribute, False


def _attribute_name(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Getattr):
        return str(node.attr)
    if (
        isinstance(node, nodes.Getitem)
        and isinstance(node.arg, nodes.Const)
        and isinstance(node.arg.value, str)
    ):
        return node.arg.value
    return None


def _root_and_attribute(node: nodes.Node) -> tuple[str, str] | None:
    """Return ('contact', 'x') for `contact.x` or `contact['x']`, else None."""
    attribute = _attribute_name(node)
    inner = getattr(node, "node", None)
    if (
        attribute is None
        or not isinstance(inner, nodes.Name)
        or inner.name not in ROOT_NAMES
    ):
        return None
    return inner.name, attribute


def _tested_defined(test: nodes.Node) -> set[tuple[str, str]]:
    """Return the fields that an if-test requires to be defined: those under
    `is defined`, alone or joined by `and`."""
    if isinstance(test, nodes.And):
        return _tested_defined(test.left) | _tested_defined(test.right)
    if isinstance(test, nodes.Test) and test.name == "defined":
        found = _root_and_attribute(test.node)
        return {found} if found else set()
    return set()


def _did_you_mean(name: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
