// Workloads: the network's published components, their declared models and how their results
// are compared when checked; admins publish a component by uploading it, and yank one.

import * as api from "../api.js";
import { h, replace, table, notice, when, field } from "../dom.js";

export const title = "Workloads";

/** The comparison rule in words. */
export function comparison(rule) {
  switch (rule?.rule) {
    case "exact":
      return "exact: results must be identical";
    case "float-tolerance":
      return `numbers within ${rule.value} of each other`;
    case "cosine":
      return `vectors with cosine ≥ ${rule.value}`;
    case "generation":
      return `generated text re-scored within ${rule.value} logits`;
    default:
      return JSON.stringify(rule);
  }
}

function size(bytes) {
  if (bytes >= 1 << 20) return `${(bytes / (1 << 20)).toFixed(1)} MiB`;
  if (bytes >= 1 << 10) return `${(bytes / (1 << 10)).toFixed(1)} KiB`;
  return `${bytes} B`;
}

async function yank(ctx, w, status, after) {
  if (!confirm(`Yank ${w.name} ${w.version}? No new jobs will run it; running jobs finish.`)) return;
  try {
    await api.post(`/v1/networks/${ctx.network.id}/workloads/${w.hash}/yank`);
    replace(status, notice("ok", `${w.name} ${w.version} was yanked.`));
  } catch (e) {
    replace(status, notice("error", e.message));
  }
  await after();
}

export async function render(ctx) {
  const n = ctx.network.id;
  const status = h("div", { "aria-live": "polite" });
  const listBox = h("div", { id: "workload-list" });
  let names = new Map();

  async function refresh() {
    try {
      const workloads = await api.get(`/v1/networks/${n}/workloads`);
      const columns = [
        ["Workload", (w) => h("div", {}, h("a", { href: `#/workloads/${encodeURIComponent(w.hash)}`, class: "workload-name" }, `${w.name} ${w.version}`), h("div", { class: "mono hint" }, w.hash.slice(0, 19) + "…"))],
        ["Models", (w) => w.models.join(", ") || "none"],
        ["Checked by", (w) => comparison(w.comparison)],
        ["Published", (w) => h("div", {}, when(w.published_at_ms), h("div", { class: "hint" }, `by ${names.get(w.publisher) ?? w.publisher}, ${size(w.size)}`))],
        ["State", (w) => (w.yanked ? h("span", { class: "badge bad" }, "yanked") : h("span", { class: "badge ok" }, "live"))],
      ];
      if (ctx.isAdmin) {
        columns.push([
          "Actions",
          (w) =>
            w.yanked
              ? null
              : h("button", { type: "button", class: "danger", "aria-label": `Yank ${w.name} ${w.version}`, onclick: () => yank(ctx, w, status, refresh) }, "Yank"),
        ]);
      }
      replace(listBox, table("Workloads", columns, workloads, "No workloads yet."));
    } catch (e) {
      replace(listBox, notice("error", e.message));
    }
  }

  let publish = null;
  if (ctx.isAdmin) {
    const file = h("input", { type: "file", name: "component", accept: ".wasm,application/wasm", required: true });
    const progress = h("progress", { max: "100", value: "0", hidden: true, "aria-label": "Upload progress" });
    const progressText = h("span", { class: "hint", "aria-live": "polite" });
    const button = h("button", { type: "submit" }, "Publish");
    publish = h(
      "form",
      {
        id: "publish",
        onsubmit: async (event) => {
          event.preventDefault();
          const chosen = file.files[0];
          if (!chosen) return;
          button.disabled = true;
          progress.hidden = false;
          try {
            const published = await api.upload(`/v1/networks/${n}/workloads`, chosen, {
              contentType: "application/wasm",
              onProgress: (sent, total) => {
                const percent = total ? Math.round((100 * sent) / total) : 0;
                progress.value = percent;
                progressText.textContent = sent < total ? `${percent}% sent` : "Sent; the control plane is validating it…";
              },
            });
            replace(status, notice("ok", `Published ${published.name} ${published.version} (${published.hash}).`));
            file.value = "";
          } catch (e) {
            replace(status, notice("error", `Not published: ${e.message}`));
          } finally {
            button.disabled = false;
            progress.hidden = true;
            progressText.textContent = "";
          }
          await refresh();
        },
      },
      field("Component (.wasm)", file, "A WebAssembly component of the Mesh world, as `cargo build --target wasm32-wasip2` makes it."),
      h("div", { class: "row" }, button, progress, progressText),
    );
  }

  names = await api.directory(n);
  await refresh();
  return h(
    "div",
    {},
    h("h1", {}, "Workloads"),
    status,
    listBox,
    publish ? [h("h2", {}, "Publish a workload"), h("div", { class: "card" }, publish)] : null,
  );
}

/** One workload's page. */
export const detail = {
  title: "Workload",
  async render(ctx, { hash }) {
    const n = ctx.network.id;
    const status = h("div", { "aria-live": "polite" });
    const w = await api.get(`/v1/networks/${n}/workloads/${hash}`);
    const body = h("div", {});
    const draw = (w) =>
      replace(
        body,
        h("h1", {}, `${w.name} ${w.version}`),
        status,
        h(
          "div",
          { class: "card" },
          h(
            "dl",
            { class: "facts" },
            h("dt", {}, "Hash"), h("dd", { class: "mono" }, w.hash),
            h("dt", {}, "Declared models"), h("dd", {}, w.models.join(", ") || "none"),
            h("dt", {}, "Comparison rule"), h("dd", {}, comparison(w.comparison)),
            h("dt", {}, "Size"), h("dd", {}, size(w.size)),
            h("dt", {}, "Publisher"), h("dd", { class: "mono" }, w.publisher),
            h("dt", {}, "Published"), h("dd", {}, when(w.published_at_ms)),
            h("dt", {}, "State"), h("dd", {}, w.yanked ? "yanked: no new jobs run it" : "live"),
          ),
        ),
        ctx.isAdmin && !w.yanked
          ? h("button", {
              type: "button",
              class: "danger",
              onclick: () => yank(ctx, w, status, async () => draw(await api.get(`/v1/networks/${n}/workloads/${hash}`))),
            }, "Yank")
          : null,
        h("p", {}, h("a", { href: "#/workloads" }, "All workloads")),
      );
    draw(w);
    return body;
  },
};
