// Copy-to-clipboard for a newly created API key. Without JavaScript the key stays selectable text.
(function () {
  "use strict";

  function reveal(root) {
    if (!navigator.clipboard) {
      return;
    }
    root.querySelectorAll("button[data-copy][hidden]").forEach(function (button) { button.hidden = false; });
  }

  document.addEventListener("DOMContentLoaded", function () { reveal(document); });
  document.addEventListener("htmx:afterSettle", function () { reveal(document); });
  document.addEventListener("click", function (event) {
    const button = event.target.closest("button[data-copy]");
    if (!button) {
      return;
    }
    const input = document.querySelector(button.dataset.copy);
    if (!input) {
      return;
    }
    input.select();
    navigator.clipboard.writeText(input.value).then(function () {
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = "Copy"; }, 2000);
    }, function () {
      button.textContent = "Select and copy";
    });
  });
})();
