// Provisioning rate: things per minute, from the registry size the fleet view polls, drawn with
// uPlot (vendored). Each sample is (time, thing count); the rate is the change per minute.
/* global uPlot */

const SAMPLES = 90;

export class RateChart {
  constructor(element) {
    this.samples = [];
    this.plot = new uPlot({
      width: Math.max(320, element.clientWidth - 20), height: 200,
      series: [{}, { label: "things/min", stroke: "#2b6cb0", fill: "#2b6cb022", width: 2 }],
      axes: [{}, { size: 50 }],
      scales: { y: { range: (u, min, max) => [0, Math.max(5, max)] } },
    }, [[], []], element);
  }

  sample(count, atMs = Date.now()) {
    this.samples.push([atMs / 1000, count]);
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
  }
}
