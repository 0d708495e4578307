// The console's one way to the REST API: the same routes and the same authorization the CLI
// uses. The bearer token travels in the Authorization header, which a page on another site
// cannot make the browser send, so there is no cookie for a cross-site request to ride on.

const TOKEN_KEY = "mesh.token";

/** An error the API answered, carrying its status, code and message as the API wrote them. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** The token this tab signed in with, if any (kept for the tab only, not across windows). */
export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** Remember `value` as this tab's token, or forget it with `null`. */
export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** Called when the API says the token no longer holds. */
let onUnauthenticated = () => {};
export function whenUnauthenticated(callback) {
  onUnauthenticated = callback;
}

function url(path, query) {
  const u = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query ?? {})) {
    if (v !== undefined && v !== null && v !== "") u.searchParams.set(k, String(v));
  }
  return u;
}

function headers(extra, bearer) {
  const out = new Headers(extra ?? {});
  const t = bearer ?? token();
  if (t) out.set("Authorization", `Bearer ${t}`);
  return out;
}

/**
 * Turn a failed response into an `ApiError` with the server's own message. A 401 for the
 * tab's own token ends the session (`quiet` when the call tried another token).
 */
export async function failure(response, quiet = false) {
  let code = `http_${response.status}`;
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body?.error?.message) {
      code = body.error.code ?? code;
      message = body.error.message;
    }
  } catch {
    // Not JSON: keep the status line.
  }
  if (response.status === 401 && !quiet) onUnauthenticated(message);
  return new ApiError(response.status, code, message);
}

/**
 * Call the API. `json` is sent as a JSON body; `body` as-is (with `contentType`); `bearer`
 * tries a token other than the tab's (signing in). Answers the parsed JSON (or `null` for an
 * empty body); throws `ApiError` on a non-2xx status.
 */
export async function call(method, path, { query, json, body, contentType, signal, bearer } = {}) {
  const extra = {};
  if (json !== undefined) extra["Content-Type"] = "application/json";
  else if (contentType) extra["Content-Type"] = contentType;
  let response;
  try {
    response = await fetch(url(path, query), {
      method,
      headers: headers(extra, bearer),
      body: json !== undefined ? JSON.stringify(json) : body,
      signal,
      credentials: "omit",
      cache: "no-store",
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "unreachable", `the control plane did not answer: ${e.message}`);
  }
  if (!response.ok) throw await failure(response, bearer !== undefined);
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path, query) => call("GET", path, { query });
export const post = (path, json, query) => call("POST", path, { json, query });
export const put = (path, json) => call("PUT", path, { json });
export const patch = (path, json) => call("PATCH", path, { json });
export const del = (path) => call("DELETE", path);

/**
 * Upload `file` with progress (fetch cannot report upload progress; XMLHttpRequest can).
 * `onProgress(sent, total)` is called as bytes leave. Answers the parsed JSON.
 */
export function upload(path, file, { query, contentType, onProgress } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url(path, query));
    const t = token();
    if (t) xhr.setRequestHeader("Authorization", `Bearer ${t}`);
    xhr.setRequestHeader("Content-Type", contentType ?? "application/octet-stream");
    xhr.upload.addEventListener("progress", (e) => onProgress?.(e.loaded, e.total || file.size));
    xhr.addEventListener("error", () =>
      reject(new ApiError(0, "unreachable", "the upload broke off before the control plane answered")),
    );
    xhr.addEventListener("load", () => {
      let body = null;
      try {
        body = xhr.responseText ? JSON.parse(xhr.responseText) : null;
      } catch {
        body = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) return resolve(body);
      if (xhr.status === 401) onUnauthenticated(body?.error?.message ?? "signed out");
      reject(
        new ApiError(
          xhr.status,
          body?.error?.code ?? `http_${xhr.status}`,
          body?.error?.message ?? `${xhr.status} ${xhr.statusText}`,
        ),
      );
    });
    xhr.send(file);
  });
}

/**
 * Read a server-sent event stream (the OpenAI chat stream): calls `onEvent(data)` with each
 * `data:` payload, parsed as JSON, until `[DONE]`. Throws `ApiError` on an error status, and
 * for an `{"error"}` event (a failure after the stream began).
 */
export async function events(path, json, onEvent, { signal, headers: extra } = {}) {
  const response = await fetch(url(path), {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream", ...extra }),
    body: JSON.stringify(json),
    signal,
    credentials: "omit",
    cache: "no-store",
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      const event = JSON.parse(data);
      if (event.error) throw new ApiError(502, event.error.code ?? "stream_error", event.error.message);
      onEvent(event);
    }
  }
}

/**
 * Names of the network's people and devices by id, for showing who did what. Ids of people
 * who left, or that the caller may not list, stay ids.
 */
export async function directory(network) {
  const [members, devices] = await Promise.all([
    get(`/v1/networks/${network}/members`).catch(() => []),
    get(`/v1/networks/${network}/devices`).catch(() => []),
  ]);
  const names = new Map();
  for (const m of members) names.set(m.person, m.name);
  for (const d of devices) names.set(d.id, d.name);
  return names;
}
