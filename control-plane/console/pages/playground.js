// The playground: embed texts on the network and compare them, and chat with a model that
// streams its answer. Each run is an ordinary job, paid and checked like any other.

import * as api from "../api.js";
import { h, replace, notice, field } from "../dom.js";

export const title = "Playground";

function cosine(a, b) {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i += 1) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / (Math.sqrt(na) * Math.sqrt(nb) || 1);
}

/** Tint a cell by its similarity (through the CSS object model, which the policy allows). */
function shade(cell, similarity) {
  const strength = Math.max(0, Math.min(1, similarity));
  cell.style.backgroundColor = `rgba(47, 111, 222, ${(0.08 + 0.5 * strength).toFixed(3)})`;
  return cell;
}

function similarityTable(texts, vectors) {
  const label = (i) => `${i + 1}. ${texts[i].length > 40 ? `${texts[i].slice(0, 40)}…` : texts[i]}`;
  return h(
    "div",
    { class: "table-wrap", role: "region", "aria-label": "Similarities", tabindex: "0" },
    h(
      "table",
      { class: "similarity", id: "similarities" },
      h("caption", {}, "Cosine similarity of each pair of texts"),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Text"), texts.map((_, j) => h("th", { scope: "col" }, String(j + 1))))),
      h(
        "tbody",
        {},
        vectors.map((v, i) =>
          h("tr", {}, h("th", { scope: "row" }, label(i)), vectors.map((w, j) => shade(h("td", { class: "cell", "data-label": String(j + 1) }, cosine(v, w).toFixed(3)), cosine(v, w)))),
        ),
      ),
    ),
  );
}

function embedder(ctx, workloads) {
  const n = ctx.network.id;
  const choices = workloads.filter((w) => w.comparison?.rule === "cosine");
  const result = h("div", { id: "embed-result", "aria-live": "polite" });
  if (choices.length === 0) {
    return h("div", { class: "card" }, notice("info", "No embedding workload is published in this network yet."));
  }
  const workload = h("select", { name: "workload" }, choices.map((w) => h("option", { value: w.hash }, `${w.name} ${w.version} (${w.models.join(", ")})`)));
  const texts = h("textarea", { name: "texts", rows: "5", required: true });
  texts.value = "A cat sits on the mat.\nA kitten rests on a rug.\nThe stock market fell today.";
  const button = h("button", { type: "submit" }, "Embed");
  const form = h(
    "form",
    {
      id: "embed",
      onsubmit: async (event) => {
        event.preventDefault();
        const lines = texts.value.split("\n").map((t) => t.trim()).filter(Boolean);
        if (lines.length === 0) {
          replace(result, notice("error", "Write at least one text, one a line."));
          return;
        }
        button.disabled = true;
        replace(result, h("p", { role: "status" }, `Running ${lines.length} text${lines.length === 1 ? "" : "s"} on the network…`));
        try {
          const run = await api.post(`/v1/networks/${n}/jobs/run`, { workload: workload.value, input: { texts: lines } });
          const vectors = run.output.embeddings;
          replace(
            result,
            notice(
              "ok",
              `${vectors.length} vectors of ${vectors[0]?.length ?? 0} dimensions from one device, `,
              run.relayed ? "through the relay" : "over a direct connection",
              `, in ${run.attempts} attempt${run.attempts === 1 ? "" : "s"}. `,
              h("a", { href: `#/jobs/${run.job.id}`, id: "embed-job" }, "See the job, its receipt and its check"),
            ),
            similarityTable(lines, vectors),
          );
        } catch (e) {
          replace(result, notice("error", e.message));
        } finally {
          button.disabled = false;
        }
      },
    },
    field("Workload", workload),
    field("Texts, one a line", texts),
    button,
  );
  return h("div", { class: "card" }, form, result);
}

function chatter(ctx, workloads) {
  const choices = workloads.filter((w) => w.comparison?.rule === "generation");
  if (choices.length === 0) {
    return h("div", { class: "card" }, notice("info", "No chat workload is published in this network yet."));
  }
  const log = h("div", { class: "chat-log", id: "chat-log", "aria-live": "polite" });
  const model = h("select", { name: "model" }, choices.map((w) => h("option", { value: w.hash }, `${w.name} ${w.version} (${w.models.join(", ")})`)));
  const message = h("textarea", { name: "message", rows: "2", required: true });
  const maxTokens = h("input", { type: "number", name: "max_tokens", min: "1", max: "1024", step: "1", value: "128", required: true });
  const send = h("button", { type: "submit" }, "Send");
  const stop = h("button", { type: "button", class: "secondary", disabled: true }, "Stop");
  const status = h("div", { "aria-live": "polite" });
  const history = [];
  let controller = null;
  stop.addEventListener("click", () => controller?.abort());

  const form = h(
    "form",
    {
      id: "chat",
      onsubmit: async (event) => {
        event.preventDefault();
        const text = message.value.trim();
        if (!text) return;
        message.value = "";
        history.push({ role: "user", content: text });
        log.append(h("div", { class: "turn user" }, text));
        const answer = h("div", { class: "turn assistant" });
        log.append(answer);
        send.disabled = true;
        stop.disabled = false;
        replace(status);
        controller = new AbortController();
        let reply = "";
        try {
          await api.events(
            "/v1/chat/completions",
            { model: model.value, messages: history, stream: true, max_tokens: Number(maxTokens.value) },
            (chunk) => {
              const piece = chunk.choices?.[0]?.delta?.content;
              if (piece) {
                reply += piece;
                answer.textContent = reply;
              }
            },
            { signal: controller.signal, headers: { "Mesh-Network": ctx.network.id } },
          );
          history.push({ role: "assistant", content: reply });
        } catch (e) {
          if (e.name === "AbortError") {
            replace(status, notice("info", "Stopped. The job was cancelled and refunded."));
          } else {
            replace(status, notice("error", e.message));
          }
          if (reply) history.push({ role: "assistant", content: reply });
          else history.pop();
        } finally {
          answer.dataset.done = "true";
          send.disabled = false;
          stop.disabled = true;
          controller = null;
        }
      },
    },
    h("div", { class: "row" }, field("Model", model), field("Longest answer (tokens)", maxTokens)),
    field("Message", message),
    h("div", { class: "row" }, send, stop),
  );
  // Enter sends; Shift+Enter starts a new line.
  message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !send.disabled) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  return h("div", { class: "card" }, log, status, form);
}

export async function render(ctx) {
  const workloads = (await api.get(`/v1/networks/${ctx.network.id}/workloads`)).filter((w) => !w.yanked);
  return h(
    "div",
    {},
    h("h1", {}, "Playground"),
    h("p", { class: "hint" }, `Each run is a job on one of the network's devices and costs ${ctx.network.policy.job_price} credit${ctx.network.policy.job_price === 1 ? "" : "s"}.`),
    h("h2", {}, "Embed texts"),
    embedder(ctx, workloads),
    h("h2", {}, "Chat"),
    chatter(ctx, workloads),
  );
}
