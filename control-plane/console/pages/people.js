// People and invites: members and their roles; admins invite and remove people, owners change
// roles. What a caller may not do is not offered (the API refuses it anyway).

import * as api from "../api.js";
import { h, replace, table, notice, when, field, copyButton } from "../dom.js";

export const title = "People";

const ROLES = ["member", "admin", "owner"];

export async function render(ctx) {
  const n = ctx.network.id;
  const status = h("div", { "aria-live": "polite" });
  const membersBox = h("div", { id: "member-list" });
  const invitesBox = h("div", { id: "invite-list" });
  let names = new Map();

  const say = (kind, text) => replace(status, notice(kind, text));

  async function changeRole(member, role) {
    try {
      await api.put(`/v1/networks/${n}/members/${member.person}`, { role });
      say("ok", `${member.name} is now ${role === "admin" ? "an" : "a"} ${role}.`);
    } catch (e) {
      say("error", `${member.name}: ${e.message}`);
    }
    await refresh();
  }

  async function remove(member) {
    if (!confirm(`Remove ${member.name} from ${ctx.network.name}? Their devices here are revoked.`)) return;
    try {
      await api.del(`/v1/networks/${n}/members/${member.person}`);
      say("ok", `${member.name} was removed.`);
    } catch (e) {
      say("error", `${member.name}: ${e.message}`);
    }
    await refresh();
  }

  async function revokeInvite(invite) {
    try {
      await api.del(`/v1/networks/${n}/invites/${invite.id}`);
      say("ok", "The invite was revoked.");
    } catch (e) {
      say("error", e.message);
    }
    await refresh();
  }

  function roleCell(m) {
    if (!ctx.isOwner || m.person === ctx.me.id) return m.role;
    const select = h(
      "select",
      { "aria-label": `Role of ${m.name}` },
      ROLES.map((r) => h("option", { value: r, selected: r === m.role }, r)),
    );
    return h(
      "div",
      { class: "row" },
      select,
      h("button", { type: "button", class: "secondary", onclick: () => changeRole(m, select.value) }, "Change role"),
    );
  }

  function memberActions(m) {
    const mayRemove = ctx.isAdmin && m.person !== ctx.me.id && (m.role !== "owner" || ctx.isOwner);
    if (!mayRemove) return null;
    return h("button", { type: "button", class: "danger", "aria-label": `Remove ${m.name}`, onclick: () => remove(m) }, "Remove");
  }

  async function refresh() {
    try {
      const members = await api.get(`/v1/networks/${n}/members`);
      names = new Map(members.map((m) => [m.person, m.name]));
      const columns = [
        ["Name", (m) => h("div", {}, h("strong", {}, m.name), m.person === ctx.me.id ? " (you)" : null, h("div", { class: "mono hint" }, m.person))],
        ["Role", roleCell],
        ["Joined", (m) => when(m.joined_at_ms)],
      ];
      if (ctx.isAdmin) columns.push(["Actions", memberActions]);
      replace(membersBox, table("Members", columns, members));
    } catch (e) {
      replace(membersBox, notice("error", e.message));
    }
    if (!ctx.isAdmin) return;
    try {
      const invites = await api.get(`/v1/networks/${n}/invites`);
      replace(
        invitesBox,
        table(
          "Open invites",
          [
            ["Kind", (i) => (i.kind === "person" ? `person (${i.role})` : "device")],
            ["Made by", (i) => names.get(i.created_by) ?? i.created_by],
            ["Made", (i) => when(i.created_at_ms)],
            ["Expires", (i) => when(i.expires_at_ms)],
            ["Actions", (i) => h("button", { type: "button", class: "danger", "aria-label": "Revoke invite", onclick: () => revokeInvite(i) }, "Revoke")],
          ],
          invites,
          "No open invites.",
        ),
      );
    } catch (e) {
      replace(invitesBox, notice("error", e.message));
    }
  }

  const created = h("div", { id: "person-invite-result", "aria-live": "polite" });
  const role = h(
    "select",
    { name: "role" },
    h("option", { value: "member" }, "member"),
    ctx.isOwner ? h("option", { value: "admin" }, "admin") : null,
  );
  const inviteForm = h(
    "form",
    {
      id: "person-invite",
      class: "inline",
      onsubmit: async (event) => {
        event.preventDefault();
        try {
          const invite = await api.post(`/v1/networks/${n}/invites`, { kind: "person", role: role.value });
          replace(
            created,
            notice(
              "ok",
              h("p", {}, "Give this code to the person (it works once and is not shown again). They sign in to this console with it, or run:"),
              h("pre", { id: "person-invite-code" }, `mesh login --server ${location.origin} --invite '${invite.code}' --name 'Their name'`),
              h("div", { class: "row" }, copyButton(invite.code, "Copy code")),
            ),
          );
        } catch (e) {
          replace(created, notice("error", e.message));
        }
        await refresh();
      },
    },
    field("Role", role),
    h("button", { type: "submit" }, "Create person invite"),
  );

  await refresh();
  return h(
    "div",
    {},
    h("h1", {}, "People"),
    status,
    h("h2", {}, "Members"),
    membersBox,
    ctx.isAdmin ? [h("h2", {}, "Invite a person"), h("div", { class: "card" }, inviteForm, created), h("h2", {}, "Open invites"), invitesBox] : null,
  );
}
