// Wiring: the login (token in sessionStorage, checked against a guarded route), the fleet view's
// poll loop, the event stream, and the #/device/<name> page. A 401 anywhere logs out.
import { getJson, token, Unauthorized } from "./api.js";
import { DevicePage } from "./device.js";
import { EventList } from "./events.js";
import { FleetView } from "./fleet.js";
import { RegionMap } from "./map.js";
import { RateChart } from "./rate.js";

const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);
let session = null;
let map = null;

/** One Leaflet map for the page's life: removing a map while its zoom animation is pending throws
 * inside Leaflet, so a second login reuses it (``place`` replaces the markers). */
function theMap() {
  map = map || new RegionMap($("map"));
  return map;
}

function status(text) {
  $("status").textContent = text;
}

function showLogin(message = "") {
  if (session) session.stop();
  session = null;
  token.clear();
  $("login-error").textContent = message;
  for (const id of ["fleet", "device", "logout"]) $(id).hidden = true;
  $("login").hidden = false;
  $("served-by").textContent = "";
  status("");
}

function failed(error) {
  if (error instanceof Unauthorized) showLogin("The admin token was refused. Log in again.");
  else status(`error: ${error.message}`);
}

class Session {
  constructor(layout) {
    this.layout = layout;
    this.abort = new AbortController();
    this.map = theMap();
    this.events = new EventList($("events"));
    this.fleet = new FleetView(layout, this.map, (kind, text) => this.events.add(kind, text));
    this.rate = new RateChart($("rate"));
    this.device = new DevicePage(layout);
  }

  async start() {
    await this.map.drawWorld();
    this.map.place(this.layout.regions);
    this.events.run(this.abort.signal, failed);
    this.poll();
    this.timer = setInterval(() => this.poll(), POLL_MS);
    window.addEventListener("hashchange", this.route);
    this.route();
  }

  stop() {
    this.abort.abort();
    clearInterval(this.timer);
    this.device.close();
    window.removeEventListener("hashchange", this.route);
    this.rate.plot.destroy();  // a later login builds the chart afresh (the map is kept: see below)
    $("events").replaceChildren();
    for (const id of ["devices", "regions"]) document.querySelector(`#${id} tbody`).replaceChildren();
  }

  async poll() {
    try {
      const count = await this.fleet.refresh();
      if (count !== null) this.rate.sample(count);
      status(`updated ${new Date().toLocaleTimeString()}`);
    } catch (error) {
      failed(error);
    }
  }

  route = () => {
    const match = location.hash.match(/^#\/device\/(.+)$/);
    $("fleet").hidden = Boolean(match);
    $("device").hidden = !match;
    if (match) this.device.open(decodeURIComponent(match[1]), failed);
    else this.device.close();
    if (!match) this.map.map.invalidateSize();
  };
}

async function enter() {
  const layout = await getJson("/dashboard/fleet.json");  // a 401 here: wrong token
  $("login").hidden = true;
  $("logout").hidden = false;
  $("served-by").textContent = `served by ${layout.region}`;
  $("fleet").hidden = false;
  session = new Session(layout);
  await session.start();
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  token.set($("token").value.trim());
  $("token").value = "";
  try {
    await enter();
  } catch (error) {
    showLogin(error instanceof Unauthorized ? "That is not this fleet's admin token." : `error: ${error.message}`);
  }
});
$("logout").addEventListener("click", () => showLogin());

if (token.get()) enter().catch((error) => showLogin(error instanceof Unauthorized ? "" : error.message));
else showLogin();
