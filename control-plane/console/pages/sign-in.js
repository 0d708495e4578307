// Signing in: with an API token (`mesh token create`), or with a person invite, which makes
// a new person and answers their token. Either way the token is kept for this tab only.

import * as api from "../api.js";
import { h, field, notice } from "../dom.js";

export const title = "Sign in";

let pending = null;
/** A message to show on the next sign-in page (why the session ended). */
export function pendingMessage(message) {
  pending = message;
}

export async function render({ signedIn }) {
  const status = h("div", { "aria-live": "polite" });
  if (pending) {
    status.append(notice("info", pending));
    pending = null;
  }
  const fail = (e) => status.replaceChildren(notice("error", e.message));

  const tokenInput = h("input", { type: "password", name: "token", autocomplete: "off", required: true, spellcheck: "false" });
  const tokenForm = h(
    "form",
    {
      id: "token-sign-in",
      onsubmit: async (event) => {
        event.preventDefault();
        const value = tokenInput.value.trim();
        try {
          // Check the token before keeping it.
          await api.call("GET", "/v1/me", { bearer: value });
        } catch (e) {
          fail(e.status === 401 ? new Error(`That token was not accepted: ${e.message}`) : e);
          return;
        }
        await signedIn(value);
      },
    },
    h("h2", {}, "With an API token"),
    field("API token", tokenInput, "Make one with `mesh token create`."),
    h("button", { type: "submit" }, "Sign in"),
  );

  const codeInput = h("input", { type: "text", name: "code", autocomplete: "off", required: true, spellcheck: "false" });
  const nameInput = h("input", { type: "text", name: "name", autocomplete: "name", required: true, maxlength: "64" });
  const inviteForm = h(
    "form",
    {
      id: "invite-sign-in",
      onsubmit: async (event) => {
        event.preventDefault();
        try {
          const accepted = await api.call("POST", "/v1/invites/accept", {
            json: { code: codeInput.value.trim(), name: nameInput.value.trim() },
            bearer: "",
          });
          if (!accepted.token) throw new Error("The invite was accepted but gave no token; sign in with your token.");
          await signedIn(accepted.token);
        } catch (e) {
          fail(e);
        }
      },
    },
    h("h2", {}, "With a person invite"),
    field("Invite code", codeInput, "The code an admin gave you (from the People page, or `mesh network invite`)."),
    field("Your name", nameInput),
    h("button", { type: "submit" }, "Join and sign in"),
  );

  return h(
    "div",
    { class: "sign-in" },
    h("h1", {}, "Sign in to Mesh"),
    status,
    h("div", { class: "card" }, tokenForm),
    h("div", { class: "card" }, inviteForm),
  );
}
