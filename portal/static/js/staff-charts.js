// Staff charts (revenue page): progressive enhancement over the tables that hold the same numbers.
// Each <canvas class="staff-chart"> carries its data as JSON in data-chart (no inline script, CSP-friendly):
// {type, labels, datasets: [{label, role, values}], format: "money"|"count"|"percent", stacked, horizontal,
//  currency, exponent}. Money values are integer minor units; they are formatted here for the axis only.
(function () {
  "use strict";

  const ROLES = {
    primary: "#1e88e5",
    good: "#2e7d32",
    bad: "#c62828",
    warn: "#f9a825",
    muted: "#90a4ae",
  };

  function formatter(spec) {
    if (spec.format === "money") {
      const scale = Math.pow(10, spec.exponent || 0);
      const money = new Intl.NumberFormat(undefined, { style: "currency", currency: spec.currency });
      return function (minor) { return minor === null ? "—" : money.format(minor / scale); };
    }
    if (spec.format === "percent") {
      return function (value) { return value === null ? "—" : value + " %"; };
    }
    const count = new Intl.NumberFormat();
    return function (value) { return value === null ? "—" : count.format(value); };
  }

  function draw(root) {
    if (typeof window.Chart !== "function") {
      return;
    }
    root.querySelectorAll("canvas.staff-chart:not([data-drawn])").forEach(function (canvas) {
      let spec;
      try {
        spec = JSON.parse(canvas.dataset.chart);
      } catch (error) {
        return;
      }
      canvas.dataset.drawn = "1";
      const box = canvas.closest(".chart-box");
      if (box) {
        box.hidden = false;
        if (spec.horizontal) {  // a bar per label, whatever their number
          box.style.height = (70 + 34 * spec.labels.length) + "px";
        }
      }
      const format = formatter(spec);
      const line = spec.type === "line";
      const valueAxis = spec.horizontal ? "x" : "y";
      const labelAxis = spec.horizontal ? "y" : "x";
      const scales = {};
      scales[labelAxis] = { stacked: !!spec.stacked, grid: { display: false } };
      scales[valueAxis] = {
        stacked: !!spec.stacked,
        beginAtZero: true,
        ticks: { precision: spec.format === "count" ? 0 : undefined, callback: function (v) { return format(v); } },
      };
      if (spec.format === "percent") {
        scales[valueAxis].suggestedMax = 10;
      }
      new window.Chart(canvas, {
        type: spec.type,
        data: {
          labels: spec.labels,
          datasets: spec.datasets.map(function (set) {
            const colour = ROLES[set.role] || ROLES.primary;
            return {
              label: set.label,
              data: set.values,
              backgroundColor: line ? colour + "33" : colour,
              borderColor: colour,
              borderWidth: line ? 2 : 0,
              borderRadius: line ? 0 : 3,
              maxBarThickness: 28,
              spanGaps: true,
              fill: line,
              tension: 0.2,
              pointRadius: line ? 3 : 0,
            };
          }),
        },
        options: {
          indexAxis: spec.horizontal ? "y" : "x",
          responsive: true,
          maintainAspectRatio: false,
          animation: false,
          plugins: {
            legend: { display: spec.datasets.length > 1, position: "bottom" },
            tooltip: {
              callbacks: {
                label: function (ctx) {
                  const value = spec.horizontal ? ctx.parsed.x : ctx.parsed.y;
                  return ctx.dataset.label + ": " + format(value);
                },
              },
            },
          },
          scales: scales,
        },
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () { draw(document); });
  document.addEventListener("htmx:afterSettle", function () { draw(document); });
})();
