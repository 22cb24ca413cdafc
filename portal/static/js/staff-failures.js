// Errors & retries: "select every failure on this page" (the report chart is drawn by staff-charts.js).
(function () {
  "use strict";

  function selectAll(root) {
    const all = root.querySelector("#select-all");
    if (!all || all.dataset.ready) {
      return;
    }
    all.dataset.ready = "1";
    all.hidden = false;
    all.addEventListener("change", function () {
      document.querySelectorAll("#failures input[name=ids]:not(:disabled)").forEach(function (box) { box.checked = all.checked; });
    });
  }

  document.addEventListener("DOMContentLoaded", function () { selectAll(document); });
  document.addEventListener("htmx:afterSettle", function () { selectAll(document); });
})();
