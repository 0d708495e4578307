// Credits: your balance and history; admins see every member's balance and grant credits.

import * as api from "../api.js";
import { h, replace, table, notice, when, field } from "../dom.js";

export const title = "Credits";

const PAGE = 25;

/** A key that makes a retried grant count once. */
function idempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `console-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

function kindText(kind) {
  return kind.replaceAll("_", " ");
}

export async function render(ctx) {
  const n = ctx.network.id;
  const status = h("div", { "aria-live": "polite" });
  const balanceBox = h("div", { class: "stats" });
  const historyBox = h("div", { id: "credit-history" });
  const membersBox = h("div", { id: "member-balances" });
  let offset = 0;
  let history = [];

  function drawHistory() {
    const page = history.slice(offset, offset + PAGE);
    replace(
      historyBox,
      table(
        "Credit history",
        [
          ["When", (e) => when(e.created_at_ms)],
          ["Kind", (e) => kindText(e.kind)],
          ["Amount", (e) => h("span", { class: e.amount < 0 ? "negative" : "positive" }, e.amount > 0 ? `+${e.amount}` : String(e.amount))],
          ["Job", (e) => (e.job ? h("a", { href: `#/jobs/${e.job}`, class: "mono" }, e.job.slice(0, 16) + "…") : "—")],
          ["Memo", (e) => e.memo || "—"],
        ],
        page,
        "No credit movements yet.",
      ),
      history.length > PAGE
        ? h(
            "div",
            { class: "row pager" },
            h("button", { type: "button", class: "secondary", disabled: offset === 0, onclick: () => { offset = Math.max(0, offset - PAGE); drawHistory(); } }, "Newer"),
            h("span", {}, `${offset + 1}–${Math.min(offset + PAGE, history.length)} of ${history.length}`),
            h("button", { type: "button", class: "secondary", disabled: offset + PAGE >= history.length, onclick: () => { offset += PAGE; drawHistory(); } }, "Older"),
          )
        : null,
    );
  }

  async function refresh() {
    const [balance, entries] = await Promise.all([
      api.get(`/v1/networks/${n}/credits/balance`),
      api.get(`/v1/networks/${n}/credits/history`),
    ]);
    replace(
      balanceBox,
      h("div", { class: "stat", id: "my-balance" }, h("span", { class: "value" }, String(balance.balance)), h("span", { class: "label" }, "your balance")),
      h("div", { class: "stat" }, h("span", { class: "value" }, String(ctx.network.policy.job_price)), h("span", { class: "label" }, "credits per job")),
    );
    history = entries;
    drawHistory();
    if (!ctx.isAdmin) return;
    const members = await api.get(`/v1/networks/${n}/members`);
    const balances = await Promise.all(
      members.map((m) =>
        api
          .get(`/v1/networks/${n}/credits/balance`, { person: m.person })
          .then((b) => b.balance)
          .catch((e) => `(${e.message})`),
      ),
    );
    replace(
      membersBox,
      table(
        "Balances",
        [
          ["Member", ([m]) => m.name],
          ["Role", ([m]) => m.role],
          ["Balance", ([, b]) => String(b)],
        ],
        members.map((m, i) => [m, balances[i]]),
      ),
    );
    replace(grantWho, members.map((m) => h("option", { value: m.person }, `${m.name} (${m.role})`)));
  }

  const grantWho = h("select", { name: "person" });
  const grantAmount = h("input", { type: "number", name: "amount", min: "1", max: "1000000000", step: "1", required: true });
  const grantMemo = h("input", { type: "text", name: "memo", maxlength: "200" });
  const grant = ctx.isAdmin
    ? h(
        "form",
        {
          id: "grant",
          class: "inline",
          onsubmit: async (event) => {
            event.preventDefault();
            try {
              await api.post(`/v1/networks/${n}/credits/grant`, {
                person: grantWho.value,
                amount: Number(grantAmount.value),
                idempotency_key: idempotencyKey(),
                memo: grantMemo.value || undefined,
              });
              replace(status, notice("ok", `Granted ${grantAmount.value} credits.`));
              grantAmount.value = "";
              grantMemo.value = "";
            } catch (e) {
              replace(status, notice("error", `Not granted: ${e.message}`));
            }
            await refresh();
          },
        },
        field("To", grantWho),
        field("Credits", grantAmount),
        field("Memo", grantMemo),
        h("button", { type: "submit" }, "Grant"),
      )
    : null;

  await refresh();
  return h(
    "div",
    {},
    h("h1", {}, "Credits"),
    status,
    balanceBox,
    ctx.isAdmin ? [h("h2", {}, "Members' balances"), membersBox, h("h2", {}, "Grant credits"), h("div", { class: "card" }, grant)] : null,
    h("h2", {}, "Your history"),
    historyBox,
  );
}
