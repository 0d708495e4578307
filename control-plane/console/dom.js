// Building the page without ever parsing a string as HTML.
//
// Every untrusted string (a device's name, a workload's, an audit detail) reaches the page as
// a text node or an attribute value set by `setAttribute`, never through a property that parses HTML. The
// Content-Security-Policy (`require-trusted-types-for 'script'` with no policy allowed) makes
// the browser refuse any assignment of a string to an HTML sink, so a slip here throws
// instead of running a script.

/** Attributes whose value is a URL: only same-origin paths and fragments are allowed. */
const URL_ATTRIBUTES = new Set(["href", "src", "action", "formaction"]);

/**
 * An element: `h("button", { class: "primary", onclick: fn }, "Approve")`.
 * Props starting with `on` are event listeners (functions only); `class`, `id`, `for`,
 * `aria-*`, `data-*` and other attributes are set as attribute values. Children are nodes,
 * strings (as text), numbers, or arrays of them; `null`, `undefined` and `false` are skipped.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) {
      if (typeof value !== "function") throw new TypeError(`${name} must be a function`);
      el.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (name === "value" && "value" in el) {
      el.value = String(value);
    } else if (name === "checked" || name === "disabled" || name === "selected") {
      el[name] = Boolean(value);
    } else {
      const text = value === true ? "" : String(value);
      if (URL_ATTRIBUTES.has(name) && !/^(#|\/(?!\/)|blob:)/.test(text)) {
        throw new TypeError(`refusing a ${name} that leaves this console: ${text}`);
      }
      el.setAttribute(name, text);
    }
  }
  append(el, children);
  return el;
}

/** Append children (see `h`) to `parent`. */
export function append(parent, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

/** Replace everything in `parent` with `children`. */
export function replace(parent, ...children) {
  parent.replaceChildren();
  return append(parent, children);
}

/** A labelled form field: the label's `for` names the control, so both read together. */
export function field(label, control, hint) {
  if (!control.id) control.id = uniqueId(label);
  const hintEl = hint ? h("p", { class: "hint", id: `${control.id}-hint` }, hint) : null;
  if (hintEl) control.setAttribute("aria-describedby", hintEl.id);
  return h("div", { class: "field" }, h("label", { for: control.id }, label), control, hintEl);
}

let counter = 0;
/** An element id no other element has. */
export function uniqueId(hint) {
  counter += 1;
  return `${String(hint).toLowerCase().replace(/[^a-z0-9]+/g, "-")}-${counter}`;
}

/** A table from rows: `columns` are `[heading, (row) => cell]`. */
export function table(caption, columns, rows, empty = "Nothing yet.") {
  if (rows.length === 0) return h("p", { class: "empty" }, empty);
  return h(
    "div",
    { class: "table-wrap", role: "region", "aria-label": caption, tabindex: "0" },
    h(
      "table",
      { class: "cards" },
      h("caption", { class: "visually-hidden" }, caption),
      h("thead", {}, h("tr", {}, columns.map(([heading]) => h("th", { scope: "col" }, heading)))),
      h(
        "tbody",
        {},
        rows.map((row) =>
          h("tr", {}, columns.map(([heading, cell]) => h("td", { "data-label": heading }, cell(row)))),
        ),
      ),
    ),
  );
}

/** A message box; `kind` is `error`, `ok` or `info`. Errors are announced to screen readers. */
export function notice(kind, ...children) {
  return h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, children);
}

/** A button that copies `text` to the clipboard and says so. */
export function copyButton(text, label = "Copy") {
  const button = h("button", {
    type: "button",
    class: "secondary",
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = "Copied";
      } catch {
        button.textContent = "Select and copy by hand";
      }
      setTimeout(() => (button.textContent = label), 2000);
    },
  }, label);
  return button;
}

/** A time, in the reader's locale, from milliseconds since the epoch. */
export function when(ms) {
  if (ms === null || ms === undefined) return "—";
  return h("time", { datetime: new Date(ms).toISOString() }, new Date(ms).toLocaleString());
}

/** A duration in words, from milliseconds. */
export function ago(ms) {
  if (ms === null || ms === undefined) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

/**
 * Replace `parent`'s children like `replace`, keeping keyboard focus on the control that had
 * it (matched by id, label, link or name), so a list that refreshes itself does not throw a
 * keyboard user back to the top of the page.
 */
export function refreshIn(parent, ...children) {
  const active = document.activeElement;
  const key = active && active !== parent && parent.contains(active) ? focusKey(active) : null;
  replace(parent, ...children);
  if (key) {
    const again = [...parent.querySelectorAll("a, button, input, select, textarea, [tabindex]")].find(
      (el) => focusKey(el) === key,
    );
    again?.focus({ preventScroll: true });
  }
  return parent;
}

function focusKey(el) {
  const key = el.id || el.getAttribute("aria-label") || el.getAttribute("href") || el.getAttribute("name");
  return key ? `${el.tagName}:${key}` : null;
}
