// Jobs: a live list (new jobs appear as they are submitted), and a job's page with its
// receipt, the VRF selection that decided whether it is re-executed (its proof checked by the
// control plane; `mesh job verify` checks it on your own machine), and the check's outcome.

import * as api from "../api.js";
import { h, replace, refreshIn, table, notice, when } from "../dom.js";

export const title = "Jobs";

const REFRESH_MS = 1500;
const FINAL_JOB = new Set(["done", "failed"]);
const FINAL_CHECK = new Set(["not_selected", "passed", "failed", "inconclusive", "unverifiable"]);

/** A job state as a badge. */
export function stateBadge(state) {
  const kind = { done: "ok", failed: "bad", running: "warn", assigned: "warn", queued: "" }[state] ?? "";
  return h("span", { class: `badge ${kind}`.trim() }, state);
}

/** A check state as a badge. */
export function checkBadge(state) {
  const kind = { passed: "ok", not_selected: "", failed: "bad", inconclusive: "bad", unverifiable: "warn" }[state] ?? "warn";
  return h("span", { class: `badge ${kind}`.trim() }, state.replace("_", " "));
}

/** Names of the network's workloads and devices, for showing ids as names. */
async function lookups(n) {
  const [workloads, devices] = await Promise.all([
    api.get(`/v1/networks/${n}/workloads`).catch(() => []),
    api.get(`/v1/networks/${n}/devices`).catch(() => []),
  ]);
  return {
    workload: new Map(workloads.map((w) => [w.hash, `${w.name} ${w.version}`])),
    device: new Map(devices.map((d) => [d.id, d.name])),
  };
}

export async function render(ctx) {
  const n = ctx.network.id;
  const listBox = h("div", { id: "job-list", "aria-live": "off" });
  const all = h("input", { type: "checkbox", id: "show-checks" });
  let names = await lookups(n);
  let lastDrawn = null;

  async function refresh() {
    let jobs;
    try {
      jobs = await api.get(`/v1/networks/${n}/jobs`);
    } catch (e) {
      replace(listBox, notice("error", `Could not list jobs: ${e.message}`));
      return;
    }
    const unknown = jobs.some((j) => !names.workload.has(j.workload) || (j.executor && !names.device.has(j.executor)));
    if (unknown) names = await lookups(n);
    const drawn = JSON.stringify([jobs, all.checked]);
    if (drawn === lastDrawn) return;
    lastDrawn = drawn;
    const shown = jobs.filter((j) => all.checked || j.purpose === "job");
    refreshIn(
      listBox,
      table(
        "Jobs",
        [
          ["Job", (j) => h("a", { href: `#/jobs/${j.id}`, class: "mono job-link" }, j.id.slice(0, 16) + "…")],
          ["Workload", (j) => names.workload.get(j.workload) ?? j.workload.slice(0, 14)],
          ["State", (j) => h("span", { class: "job-state", "data-job": j.id }, stateBadge(j.state))],
          ["Kind", (j) => (j.purpose === "job" ? "job" : `${j.purpose} of ${j.verifies?.slice(0, 12)}…`)],
          ["Device", (j) => (j.executor ? names.device.get(j.executor) ?? j.executor : "—")],
          ["Price", (j) => String(j.price)],
          ["Submitted", (j) => when(j.created_at_ms)],
        ],
        shown,
        "No jobs yet. Run one in the playground.",
      ),
    );
  }

  await refresh();
  const timer = setInterval(refresh, REFRESH_MS);
  ctx.onLeave(() => clearInterval(timer));
  all.addEventListener("change", refresh);
  return h(
    "div",
    {},
    h("h1", {}, "Jobs"),
    h("p", { class: "hint" }, "The newest jobs, updated live."),
    h("label", { class: "check" }, all, "Show the control plane's re-executions too"),
    listBox,
  );
}

function facts(pairs) {
  return h(
    "dl",
    { class: "facts" },
    pairs.filter(Boolean).flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]),
  );
}

const mono = (text) => h("span", { class: "mono" }, text ?? "—");

function receiptCard(receipt) {
  if (!receipt) return h("p", { class: "empty" }, "No receipt yet: the job has not finished.");
  const t = receipt.timings;
  return facts([
    ["Component", mono(receipt.component)],
    ["Models", receipt.models.length ? h("ul", {}, receipt.models.map((m) => h("li", {}, `${m.name} `, mono(m.hash), m.variant ? ` (${m.variant})` : ""))) : "none"],
    ["Input", mono(receipt.input)],
    ["Output", mono(receipt.output)],
    ["Backend", receipt.backend],
    receipt.ticket ? ["Ticket", mono(receipt.ticket)] : null,
    ["Timings", `prepare ${t.prepare_us / 1000} ms, instantiate ${t.instantiate_us / 1000} ms, run ${t.run_us / 1000} ms (inference ${t.inference_us / 1000} ms)`],
  ]);
}

function checkCard(check, names) {
  const s = check.selection;
  const verdict = check.selection_check;
  return h(
    "div",
    { id: "check" },
    facts([
      ["Outcome", h("span", { id: "check-state" }, checkBadge(check.state))],
      ["Why checked", check.reason === "ringer" ? "a known-answer item in it failed" : "the VRF draw below"],
      ["Selected", s.selected ? "yes: re-executed on another device" : "no"],
      ["Rate", `${(s.rate_ppm / 10000).toFixed(2)}% of this device's jobs`],
      [
        "Proof",
        h(
          "div",
          {},
          verdict
            ? h("p", { id: "proof-verdict", class: `badge ${verdict.holds ? "ok" : "bad"}` }, verdict.holds ? "the proof holds" : `the proof does not hold: ${verdict.detail}`)
            : h("p", { class: "badge warn" }, "not checked"),
          h("p", { class: "hint" }, "Checked by the control plane against its VRF key and this receipt. Check it on your own machine with `mesh job verify ", check.job, "`."),
        ),
      ],
      ["Receipt hash", mono(s.receipt_hash)],
      ["VRF proof", mono(s.proof)],
      ["VRF output", mono(s.output)],
      check.check_job ? ["Re-execution", h("span", {}, h("a", { href: `#/jobs/${check.check_job}`, class: "mono" }, check.check_job), check.verifier ? ` on ${names.device.get(check.verifier) ?? check.verifier}` : "")] : null,
      check.tiebreak_job ? ["Tie-break", h("span", {}, h("a", { href: `#/jobs/${check.tiebreak_job}`, class: "mono" }, check.tiebreak_job), check.tiebreaker ? ` on ${names.device.get(check.tiebreaker) ?? check.tiebreaker}` : "")] : null,
      check.verified_output ? ["Verified output", mono(check.verified_output)] : null,
      check.detail ? ["Detail", check.detail] : null,
    ]),
  );
}

/** One job's page; it follows the job until it and its check settle. */
export const detail = {
  title: "Job",
  async render(ctx, { id }) {
    const n = ctx.network.id;
    const names = await lookups(n);
    const body = h("div", {});
    let timer = null;
    let lastDrawn = null;

    async function draw() {
      let assignment;
      try {
        assignment = await api.get(`/v1/networks/${n}/jobs/${id}`);
      } catch (e) {
        replace(body, h("h1", {}, "Job"), notice("error", e.message));
        return true;
      }
      const job = assignment.job;
      let check = null;
      let checkError = null;
      if (job.state === "done") {
        try {
          check = await api.get(`/v1/networks/${n}/jobs/${id}/check`);
        } catch (e) {
          checkError = e;
        }
      }
      const drawn = JSON.stringify([assignment, check, checkError?.message]);
      if (drawn === lastDrawn) return false;
      lastDrawn = drawn;
      refreshIn(
        body,
        h("h1", {}, "Job ", h("span", { class: "mono" }, job.id)),
        h(
          "div",
          { class: "card" },
          facts([
            ["State", h("span", { id: "job-state" }, stateBadge(job.state))],
            ["Kind", job.purpose === "job" ? "a requester's job" : h("span", {}, `${job.purpose} of `, h("a", { href: `#/jobs/${job.verifies}`, class: "mono" }, job.verifies))],
            ["Workload", h("a", { href: `#/workloads/${encodeURIComponent(job.workload)}` }, names.workload.get(job.workload) ?? job.workload)],
            ["Device", job.executor ? names.device.get(job.executor) ?? job.executor : "not assigned yet"],
            ["Requester", mono(job.requester)],
            ["Price", String(job.price)],
            ["Attempts", String(job.attempts)],
            ["Submitted", when(job.created_at_ms)],
            ["Updated", when(job.updated_at_ms)],
            job.error ? ["Error", h("span", { class: "error-text" }, job.error)] : null,
            assignment.waiting ? ["Waiting", assignment.waiting] : null,
          ]),
        ),
        h("h2", {}, "Receipt"),
        h("div", { class: "card" }, receiptCard(job.receipt)),
        h("h2", {}, "Check"),
        h(
          "div",
          { class: "card" },
          check
            ? checkCard(check, names)
            : checkError && checkError.code !== "not_settled"
              ? notice("error", checkError.message)
              : h("p", { class: "empty" }, job.state === "failed" ? "A failed job is not checked." : "Not settled yet."),
        ),
        h("p", {}, h("a", { href: "#/jobs" }, "All jobs")),
      );
      return FINAL_JOB.has(job.state) && (job.state === "failed" || (check && FINAL_CHECK.has(check.state)));
    }

    const settled = await draw();
    if (!settled) {
      timer = setInterval(async () => {
        if (await draw()) clearInterval(timer);
      }, REFRESH_MS);
      ctx.onLeave(() => clearInterval(timer));
    }
    return body;
  },
};
