// The fleet view: regions (health, connected devices, replication lag and backlog to each peer)
// and devices by home and current region, from /health, /replication/status, /v1/presence and
// /things, polled. Failovers (a region going down or back, a device moving region) are noticed
// here, from the same data, and handed to the event list.
import { getJson, listAll } from "./api.js";

const HOME_ATTRIBUTE = "geofleet:homeRegion";
const THINGS_EVERY_MS = 5000;

function cell(row, value, className) {
  const td = row.insertCell();
  td.textContent = value;
  if (className) td.className = className;
  return td;
}

export class FleetView {
  /** layout: /dashboard/fleet.json; onChange(kind, text) reports failovers. */
  constructor(layout, map, onChange) {
    this.layout = layout;
    this.map = map;
    this.onChange = onChange;
    this.things = [];
    this.thingsAt = 0;
    this.health = new Map();
    this.located = new Map();
    this.seeded = false;
  }

  /** One poll of every source; returns the things count when the registry was read again (the
   * provisioning rate's sample), else null. */
  async refresh() {
    let fresh = false;
    const [health, replication, presence] = await Promise.all([
      getJson("/health", [503]), getJson("/replication/status"), getJson("/v1/presence"),
    ]);
    if (Date.now() - this.thingsAt >= THINGS_EVERY_MS) {
      this.things = await listAll("/things", "things");
      this.thingsAt = Date.now();
      fresh = true;
    }
    const views = this.regionViews(health, replication, presence.devices);
    this.noticeHealth(views);
    this.noticeMoves(presence.devices);
    this.map.update(views);
    this.renderRegions(views);
    this.renderDevices(presence.devices);
    return fresh ? this.things.length : null;
  }

  regionViews(health, replication, sessions) {
    const views = new Map();
    for (const { name } of this.layout.regions) {
      let state = "unknown";
      if (name === this.layout.region) {
        state = { ok: "ok", degraded: "degraded" }[health.status] || "down";
      } else if (health.peers?.[name]) {
        state = health.peers[name].healthy ? "ok" : "down";
      }
      const link = replication.links?.[name];
      views.set(name, {
        health: state,
        connected: sessions.filter((s) => s.region === name).length,
        lagMs: link?.lagMs ?? null,
        backlog: link?.backlog ?? null,
      });
    }
    return views;
  }

  noticeHealth(views) {
    for (const [name, view] of views) {
      const before = this.health.get(name);
      if (before && before !== view.health && (before === "down" || view.health === "down")) {
        this.onChange("failover", view.health === "down" ? `region ${name} is down` : `region ${name} is back (${view.health})`);
      }
      this.health.set(name, view.health);
    }
  }

  /** Device moves between regions (failovers), and connects and disconnects in the other
   * regions: this region's own arrive on its event stream, with AWS's fields. */
  noticeMoves(sessions) {
    const now = new Map(sessions.map((s) => [s.device, s.region]));
    for (const [device, region] of now) {
      const before = this.located.get(device);
      if (before && before !== region) {
        this.onChange("failover", `device ${device} moved ${before} \u2192 ${region}`);
      } else if (!before && this.seeded && region !== this.layout.region) {
        this.onChange("event", `[${region}] ${device} connected`);
      }
    }
    for (const [device, region] of this.located) {
      if (!now.has(device) && region !== this.layout.region) this.onChange("event", `[${region}] ${device} disconnected`);
    }
    this.located = now;
    this.seeded = true;
  }

  renderRegions(views) {
    const body = document.querySelector("#regions tbody");
    body.replaceChildren();
    for (const [name, view] of views) {
      const row = body.insertRow();
      row.dataset.region = name;
      row.dataset.health = view.health;
      cell(row, name + (name === this.layout.region ? " (this region)" : ""));
      cell(row, view.health, `health-${view.health}`);
      cell(row, String(view.connected));
      const own = name === this.layout.region;
      cell(row, own ? "\u2014" : view.lagMs == null ? "?" : `${Math.round(view.lagMs)} ms`);
      cell(row, own ? "\u2014" : view.backlog == null ? "?" : String(view.backlog));
    }
  }

  renderDevices(sessions) {
    const where = new Map(sessions.map((s) => [s.device, s.region]));
    const names = new Set([...this.things.map((t) => t.thingName), ...where.keys()]);
    const home = new Map(this.things.map((t) => [t.thingName, t.attributes?.[HOME_ATTRIBUTE] || this.layout.homeDefault]));
    const body = document.querySelector("#devices tbody");
    body.replaceChildren();
    // Connected devices first, then by name; a device away from home is highlighted.
    const ordered = [...names].sort((a, b) => (where.has(b) - where.has(a)) || a.localeCompare(b));
    for (const name of ordered) {
      const row = body.insertRow();
      row.dataset.device = name;
      const current = where.get(name);
      const homeRegion = home.get(name) || this.layout.homeDefault;
      if (current && current !== homeRegion) row.className = "away";
      const link = document.createElement("a");
      link.href = `#/device/${encodeURIComponent(name)}`;
      link.textContent = name;
      row.insertCell().append(link);
      cell(row, homeRegion);
      cell(row, current || "not connected");
    }
    document.getElementById("device-count").textContent = `(${where.size} connected of ${names.size})`;
  }
}
