// The region's admin API, as the CLI and the SDKs call it: Authorization: Bearer <admin token>.
// The token lives in sessionStorage (this tab only, gone when it closes). No other data path.

const KEY = "geofleet.adminToken";

export class Unauthorized extends Error {}

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

function headers() {
  return { Authorization: `Bearer ${token.get() || ""}` };
}

async function failure(response) {
  let message = `${response.status}`;
  try { message = (await response.json()).message || message; } catch { /* not JSON */ }
  return response.status === 401 ? new Unauthorized(message) : new Error(message);
}

/** GET a JSON route; a 503 /health still carries its report, so `allow` lists such statuses. */
export async function getJson(path, allow = []) {
  const response = await fetch(path, { headers: headers(), cache: "no-store" });
  if (!response.ok && !allow.includes(response.status)) throw await failure(response);
  return response.json();
}

/** Every page of a paged AWS-style listing (`field` holds the items), at most `cap` items. */
export async function listAll(path, field, cap = 10000) {
  const items = [];
  let next = null;
  do {
    const query = next ? `?nextToken=${encodeURIComponent(next)}` : "";
    const page = await getJson(path + query);
    items.push(...page[field]);
    next = page.nextToken;
  } while (next && items.length < cap);
  return items;
}

/**
 * Follow /v1/stream (newline-delimited JSON) with fetch's streaming body: the same route the
 * application SDK merges. `onLine` gets each decoded line; the promise settles when the stream
 * ends (the region went away, or an overflow line) or `signal` aborts it.
 */
export async function follow(filters, onLine, signal) {
  const query = filters.map((f) => `filter=${encodeURIComponent(f)}`).join("&");
  const response = await fetch(`/v1/stream?${query}`, { headers: headers(), signal, cache: "no-store" });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffered += value;
    let newline;
    while ((newline = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, newline).trim();
      buffered = buffered.slice(newline + 1);
      if (line) onLine(JSON.parse(line));
    }
  }
}
