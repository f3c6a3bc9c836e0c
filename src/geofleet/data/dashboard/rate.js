// Provisioning rate: things per minute, from the registry size the fleet view polls, drawn with
// uPlot (vendored). Each sample is (time, thing count); the rate is the change per minute.
/* global uPlot */

const SAMPLES = 90;
const WINDOW_S = 300;

const clock = (seconds) => new Date(seconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

export class RateChart {
  constructor(element) {
    this.element = element;
    this.samples = [];
    this.latest = Date.now() / 1000;
    this.plot = new uPlot({
      width: Math.max(320, element.clientWidth - 20), height: 200,
      series: [{ value: (u, v) => (v == null ? "--" : clock(v)) },
        { label: "things/min", stroke: "#2b6cb0", fill: "#2b6cb022", width: 2, points: { size: 6 } }],
      axes: [{ values: (u, splits) => splits.map(clock) }, { size: 50 }],
      scales: {
        // The last minutes up to the latest sample, however few samples there are yet.
        x: { time: true, range: () => [this.latest - WINDOW_S, this.latest] },
        y: { range: (u, min, max) => [0, Math.max(5, max)] },
      },
    }, [[], []], element);
  }

  sample(count, atMs = Date.now()) {
    this.latest = atMs / 1000;
    this.samples.push([this.latest, count]);
    if (this.samples.length > SAMPLES) this.samples.shift();
    const times = [];
    const rates = [];
    for (let i = 1; i < this.samples.length; i++) {
      const [t0, c0] = this.samples[i - 1];
      const [t1, c1] = this.samples[i];
      times.push(t1);
      rates.push(t1 > t0 ? Math.max(0, (c1 - c0) * 60 / (t1 - t0)) : 0);
    }
    this.plot.setData([times, rates]);
    this.element.dataset.samples = String(this.samples.length);  // for tests and the curious
    this.element.dataset.lastRate = rates.length ? rates[rates.length - 1].toFixed(1) : "";
  }
}
