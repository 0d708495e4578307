// Devices: status, backends, load, trust and checks, quarantine and terms; admins approve and
// revoke, and make device invites with the `mesh-host join` command to run on the device.
// The list refreshes every few seconds, so a device that joins shows up without a reload.

import * as api from "../api.js";
import { h, replace, refreshIn, table, notice, copyButton, ago, field } from "../dom.js";

export const title = "Devices";

const REFRESH_MS = 2000;
const DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

function minutes(m) {
  return `${String(Math.floor(m / 60)).padStart(2, "0")}:${String(m % 60).padStart(2, "0")}`;
}

/** One layer of terms in words (`null` when it allows everything). */
export function layerSummary(terms) {
  const parts = [];
  if (terms.workloads?.length) {
    parts.push(
      `workloads ${terms.workloads
        .map((w) => (w.name !== undefined ? w.name : w.hash !== undefined ? w.hash.slice(0, 14) : `by ${w.publisher}`))
        .join(", ")}`,
    );
  }
  if (terms.requesters?.length) {
    parts.push(`for ${terms.requesters.map((r) => (r.role !== undefined ? `${r.role}s` : r.person)).join(", ")}`);
  }
  const whenever = terms.when;
  if (whenever?.kind === "idle") parts.push(`only while idle (others under ${whenever.max_busy_percent}% CPU)`);
  if (whenever?.kind === "schedule") {
    const windows = whenever.windows
      .map((w) => `${w.days.map((d) => DAYS[d] ?? d).join("/")} ${minutes(w.start_minute)}–${minutes(w.end_minute)}`)
      .join("; ");
    const offset = whenever.utc_offset_minutes ?? 0;
    parts.push(`${windows} (UTC${offset >= 0 ? "+" : "−"}${minutes(Math.abs(offset))})`);
  }
  if (terms.max_jobs) parts.push(`at most ${terms.max_jobs} job${terms.max_jobs === 1 ? "" : "s"}`);
  if (terms.cpu_share) parts.push(`${Math.round(terms.cpu_share * 100)}% of cores`);
  if (terms.memory_mb) parts.push(`${terms.memory_mb} MB memory`);
  return parts.length ? parts.join(", ") : null;
}

function termsCell(layers) {
  const rows = [
    ["device", layers.device],
    ["owner", layers.owner],
    ["admins", layers.admins],
  ]
    .map(([name, terms]) => [name, terms ? layerSummary(terms) : null])
    .filter(([, text]) => text);
  if (rows.length === 0) return h("span", { class: "empty" }, "any job");
  return h("ul", { class: "terms" }, rows.map(([name, text]) => h("li", {}, h("strong", {}, `${name}: `), text)));
}

function statusBadge(d) {
  if (d.status === "revoked") return h("span", { class: "badge bad" }, "revoked");
  if (d.status === "pending") return h("span", { class: "badge warn" }, "pending approval");
  if (d.quarantined_at_ms) return h("span", { class: "badge bad" }, "quarantined");
  return d.online
    ? h("span", { class: "badge ok" }, "online")
    : h("span", { class: "badge" }, `offline (seen ${ago(d.last_seen_at_ms)})`);
}

export async function render(ctx) {
  const n = ctx.network.id;
  const status = h("div", { "aria-live": "polite" });
  const listBox = h("div", { id: "device-list" });
  const showRevoked = h("input", { type: "checkbox", id: "show-revoked" });
  let names = new Map();
  let lastDrawn = null;

  async function act(device, verb) {
    try {
      await api.post(`/v1/networks/${n}/devices/${device.id}/${verb}`);
      const done = { approve: "approved", release: "released from quarantine; its next failed check quarantines it again", revoke: "revoked" }[verb];
      replace(status, notice("ok", `${device.name}: ${done}.`));
    } catch (e) {
      replace(status, notice("error", `${device.name}: ${e.message}`));
    }
    await refresh();
  }

  function actions(d) {
    if (!ctx.isAdmin || d.status === "revoked") return null;
    return h(
      "div",
      { class: "actions" },
      d.status === "pending"
        ? h("button", { type: "button", "aria-label": `Approve ${d.name}`, onclick: () => act(d, "approve") }, "Approve")
        : null,
      // Another admin than the device's owner lifts a quarantine.
      d.quarantined_at_ms && d.owner !== ctx.me.id
        ? h("button", { type: "button", class: "secondary", "aria-label": `Release ${d.name}`, onclick: () => act(d, "release") }, "Release")
        : null,
      h(
        "button",
        {
          type: "button",
          class: "danger",
          "aria-label": `Revoke ${d.name}`,
          onclick: () => {
            if (confirm(`Revoke ${d.name}? It stops at once and cannot come back.`)) act(d, "revoke");
          },
        },
        "Revoke",
      ),
    );
  }

  async function refresh() {
    let devices;
    try {
      devices = await api.get(`/v1/networks/${n}/devices`);
    } catch (e) {
      replace(listBox, notice("error", `Could not list the devices: ${e.message}`));
      return;
    }
    // Draw again only when something changed (or every 30 s, for the "seen … ago" times).
    const drawn = JSON.stringify([devices, showRevoked.checked, Math.floor(Date.now() / 30000)]);
    if (drawn === lastDrawn) return;
    lastDrawn = drawn;
    const shown = devices.filter((d) => showRevoked.checked || d.status !== "revoked");
    const columns = [
      ["Device", (d) => h("div", {}, h("strong", { class: "device-name" }, d.name), h("div", { class: "mono hint", "data-id": d.id }, d.id))],
      ["Status", statusBadge],
      ["Owner", (d) => names.get(d.owner) ?? d.owner],
      [
        "Backends",
        (d) => h("div", {}, d.capabilities.backends.join(", ") || "none", h("div", { class: "hint" }, `${d.capabilities.cores} cores, ${d.capabilities.memory_mb} MB`)),
      ],
      [
        "Load",
        (d) =>
          `${d.load.running} running, ${d.load.queued} queued of ${d.load.slots} slot${d.load.slots === 1 ? "" : "s"}` +
          (d.load.others_busy_percent !== undefined ? `; its user ${d.load.others_busy_percent}% busy` : ""),
      ],
      ["Trust", (d) => `${d.trust.toFixed(2)} (${d.checks.passed} passed, ${d.checks.failed} failed)`],
      ["Path", (d) => (d.path ? h("span", { title: `the control plane's last job to it, ${ago(d.path.at_ms)}` }, d.path.relayed ? "relayed" : "direct") : h("span", { class: "empty" }, "not yet known"))],
      ["Terms", (d) => termsCell(d.terms)],
    ];
    if (ctx.isAdmin) columns.push(["Actions", actions]);
    const empty =
      devices.length === 0
        ? "No devices yet." + (ctx.isAdmin ? " Invite one below." : "")
        : "Every device here is revoked: show revoked devices to see them.";
    refreshIn(listBox, table("Devices", columns, shown, empty));
  }

  const inviteBox = h("div", { id: "device-invite-result", "aria-live": "polite" });
  const expiry = h(
    "select",
    { name: "expires" },
    h("option", { value: "3600" }, "1 hour"),
    h("option", { value: "86400", selected: true }, "1 day"),
    h("option", { value: "604800" }, "7 days"),
  );
  const inviteForm = ctx.isAdmin
    ? h(
        "form",
        {
          id: "device-invite",
          class: "inline",
          onsubmit: async (event) => {
            event.preventDefault();
            try {
              const invite = await api.post(`/v1/networks/${n}/invites`, { kind: "device", expires_in_s: Number(expiry.value) });
              const command = `mesh-host join --control-plane ${location.origin} '${invite.code}'`;
              replace(
                inviteBox,
                notice(
                  "ok",
                  h("p", {}, "Run this on the device (the code works once, and is not shown again):"),
                  h("pre", { id: "join-command" }, command),
                  h("div", { class: "row" }, copyButton(command, "Copy command"), h("span", { class: "hint" }, `Expires ${new Date(invite.expires_at_ms).toLocaleString()}.`)),
                ),
              );
            } catch (e) {
              replace(inviteBox, notice("error", e.message));
            }
          },
        },
        field("Invite expires in", expiry),
        h("button", { type: "submit" }, "Create device invite"),
      )
    : null;

  names = await api.directory(n);
  await refresh();
  const timer = setInterval(refresh, REFRESH_MS);
  ctx.onLeave(() => clearInterval(timer));
  showRevoked.addEventListener("change", refresh);

  return h(
    "div",
    {},
    h("h1", {}, "Devices"),
    status,
    h("label", { class: "check" }, showRevoked, "Show revoked devices"),
    listBox,
    ctx.isAdmin ? h("h2", {}, "Add a device") : null,
    ctx.isAdmin
      ? h(
          "div",
          { class: "card" },
          ctx.network.policy.require_device_approval
            ? h("p", {}, "New devices wait for an admin's approval here before they get work.")
            : h("p", {}, "New devices get work as soon as they join (this network does not require approval)."),
          inviteForm,
          inviteBox,
        )
      : null,
  );
}
