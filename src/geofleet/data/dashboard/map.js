// The world map: countries from the bundled Natural Earth 110m TopoJSON (no tile server), and one
// circle per region coloured by its health, with its connected devices and replication figures.
/* global L, topojson */

const COLOURS = { ok: "#2e9e44", degraded: "#d99a00", down: "#d0312d", unknown: "#7a7f87" };

const ANTARCTICA = "010";

/** Rings that cross the antimeridian jump from +180 to -180; Leaflet would draw that jump as a
 * line across the world. Shift the rest of such a ring by 360 degrees so it stays contiguous. */
function unwrapAntimeridian(geometry) {
  const polygons = geometry.type === "Polygon" ? [geometry.coordinates] : geometry.coordinates;
  for (const polygon of polygons) {
    for (const ring of polygon) {
      for (let i = 1; i < ring.length; i++) {
        const jump = ring[i][0] - ring[i - 1][0];
        if (Math.abs(jump) > 180) ring[i][0] -= Math.sign(jump) * 360;
      }
    }
  }
}

/** Leaflet puts a string tooltip in as HTML: hand it an element holding text instead. */
function text(value) {
  const span = document.createElement("span");
  span.textContent = value;
  return span;
}

export class RegionMap {
  constructor(element) {
    this.map = L.map(element, { worldCopyJump: true, attributionControl: false, minZoom: 1, zoomSnap: 0.25 }).setView([25, 10], 1.5);
    this.markers = new Map();
  }

  async drawWorld() {
    if (this.world) return;
    this.world = true;
    const world = await (await fetch("/dashboard/vendor/countries-110m.json")).json();
    const countries = topojson.feature(world, world.objects.countries);
    countries.features = countries.features.filter((f) => f.id !== ANTARCTICA);
    for (const feature of countries.features) unwrapAntimeridian(feature.geometry);
    L.geoJSON(countries, {
      style: { color: "#8aa1b4", weight: 0.6, fillColor: "#eef1e6", fillOpacity: 1 },
      interactive: false,
    }).addTo(this.map);
  }

  /** regions: [{name, latitude, longitude}] from /dashboard/fleet.json. */
  place(regions) {
    for (const marker of this.markers.values()) marker.remove();
    this.markers.clear();
    for (const region of regions) {
      const marker = L.circleMarker([region.latitude, region.longitude], { radius: 11, weight: 2, fillOpacity: 0.85 })
        .bindTooltip(text(region.name), { permanent: true, direction: "right", className: "region-label" })
        .addTo(this.map);
      marker.getElement()?.setAttribute("data-region", region.name);
      this.markers.set(region.name, marker);
    }
    this.map.fitBounds(L.latLngBounds(regions.map((r) => [r.latitude, r.longitude])).pad(0.25), { maxZoom: 3 });
  }

  /** views: name -> {health, connected, lagMs, backlog}. */
  update(views) {
    for (const [name, marker] of this.markers) {
      const view = views.get(name) || { health: "unknown" };
      marker.setStyle({ color: COLOURS[view.health], fillColor: COLOURS[view.health] });
      marker.getElement()?.setAttribute("data-health", view.health);
      marker.setRadius(9 + Math.min(12, Math.sqrt(view.connected || 0) * 2));
      marker.setTooltipContent(text(`${name}: ${view.connected ?? "?"} connected`));
    }
  }
}
