// The network at a glance: devices online, jobs per minute, credits, checks, and (for admins)
// the newest audit events.

import * as api from "../api.js";
import { h, table, notice } from "../dom.js";
import { auditColumns } from "./audit.js";

export const title = "Overview";

/** The window jobs per minute are counted over. */
const RATE_WINDOW_MS = 10 * 60 * 1000;

function stat(label, value, id) {
  return h("div", { class: "stat", id }, h("span", { class: "value" }, value), h("span", { class: "label" }, label));
}

export async function render(ctx) {
  const n = ctx.network.id;
  const [devices, jobs, balance, audit] = await Promise.all([
    api.get(`/v1/networks/${n}/devices`),
    api.get(`/v1/networks/${n}/jobs`),
    api.get(`/v1/networks/${n}/credits/balance`),
    ctx.isAdmin ? api.get(`/v1/networks/${n}/audit`, { limit: 10 }) : Promise.resolve(null),
  ]);
  const names = new Map(devices.map((d) => [d.id, d.name]));
  if (audit) for (const [id, name] of await api.directory(n)) names.set(id, name);
  const live = devices.filter((d) => d.status !== "revoked");
  const online = live.filter((d) => d.online).length;
  const pending = live.filter((d) => d.status === "pending").length;
  const since = Date.now() - RATE_WINDOW_MS;
  const recent = jobs.filter((j) => j.purpose === "job" && j.created_at_ms >= since).length;
  const perMinute = recent / (RATE_WINDOW_MS / 60000);
  const passed = devices.reduce((sum, d) => sum + d.checks.passed, 0);
  const failed = devices.reduce((sum, d) => sum + d.checks.failed, 0);
  const quarantined = live.filter((d) => d.quarantined_at_ms !== null && d.quarantined_at_ms !== undefined).length;

  const children = [
    h("h1", {}, ctx.network.name),
    h(
      "div",
      { class: "stats" },
      stat("devices online", `${online} of ${live.length}`, "stat-online"),
      stat("jobs per minute (last 10 min)", perMinute.toFixed(1), "stat-rate"),
      stat("your credits", String(balance.balance), "stat-credits"),
      stat("checks passed", String(passed), "stat-passed"),
      stat("checks failed", String(failed), "stat-failed"),
    ),
  ];
  if (pending > 0 && ctx.isAdmin) {
    children.push(
      notice("info", `${pending} device${pending === 1 ? " waits" : "s wait"} for approval. `, h("a", { href: "#/devices" }, "Review devices")),
    );
  }
  if (quarantined > 0) {
    children.push(notice("error", `${quarantined} device${quarantined === 1 ? " is" : "s are"} quarantined after failed checks.`));
  }
  if (audit) {
    children.push(
      h("h2", {}, "Recent events"),
      table(
        "Recent audit events",
        auditColumns(names),
        audit,
        "No events yet.",
      ),
      h("p", {}, h("a", { href: "#/audit" }, "The whole audit log")),
    );
  }
  return h("div", {}, children);
}
