// Usage history charts: progressive enhancement over the daily-totals tables.
// Without Chart.js (or without JavaScript) the tables stay open and nothing else changes.
(function () {
  "use strict";

  function colour(name, fallback) {
    const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return value || fallback;
  }

  function draw(root) {
    if (typeof window.Chart !== "function") {
      return;
    }
    root.querySelectorAll("canvas.usage-chart:not([data-drawn])").forEach(function (canvas) {
      let data;
      try {
        data = JSON.parse(canvas.dataset.chart);
      } catch (error) {
        return;
      }
      canvas.dataset.drawn = "1";
      const box = canvas.closest(".chart-box");
      if (box) {
        box.hidden = false;
      }
      new window.Chart(canvas, {
        type: "bar",
        data: {
          labels: data.labels.map(function (day) { return day.slice(5); }),  // MM-DD
          datasets: [{
            label: data.label,
            data: data.values,
            backgroundColor: colour("--pico-primary-background", "#1e88e5"),
            borderRadius: 3,
            maxBarThickness: 18,
          }],
        },
        options: {
          responsive: true,
          maintainAspectRatio: false,
          animation: false,
          plugins: { legend: { display: false } },
          scales: {
            x: { grid: { display: false }, ticks: { autoSkip: true, maxTicksLimit: 8 } },
            y: { beginAtZero: true, ticks: { precision: 0 } },
          },
        },
      });
      // The chart shows the numbers now; keep the table one click away.
      const section = canvas.closest(".history");
      const table = section && section.querySelector("details.history-table");
      if (table) {
        table.open = false;
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () { draw(document); });
  // A history range swapped in by htmx brings a fresh canvas.
  document.addEventListener("htmx:afterSettle", function () { draw(document); });
})();
