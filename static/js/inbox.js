// The mail lists: "select all on this page", the count of selected conversations, bulk buttons enabled
// only with a selection. Event delegation on the document, so it keeps working after htmx swaps the
// results, and the guard keeps it from being installed twice when a boosted page runs this again.
(function () {
  "use strict";
  if (window.inboxListInstalled) return;
  window.inboxListInstalled = true;

  function refresh(form) {
    var boxes = form.querySelectorAll('input[name="thread"]');
    var checked = form.querySelectorAll('input[name="thread"]:checked').length;
    var all = form.querySelector("[data-select-all]");
    var matching = form.querySelector("[data-select-matching]");
    if (all) {
      all.checked = boxes.length > 0 && checked === boxes.length;
      all.indeterminate = checked > 0 && checked < boxes.length;
    }
    // "Select all N matching" stands for every conversation only while the whole page is selected too.
    if (matching && checked < boxes.length) matching.checked = false;
    var label = form.querySelector("[data-selected-count]");
    if (label) {
      if (matching && matching.checked) label.textContent = matching.getAttribute("data-matching-label");
      else label.textContent = checked ? checked + " selected" : "";
    }
    form.querySelectorAll("[data-bulk-button]").forEach(function (button) {
      button.disabled = checked === 0 && !(matching && matching.checked);
    });
  }

  document.addEventListener("change", function (event) {
    var form = event.target.closest && event.target.closest("[data-bulk-form]");
    if (!form) return;
    if (event.target.matches("[data-select-all]") || event.target.matches("[data-select-matching]")) {
      var on = event.target.checked;
      if (event.target.matches("[data-select-all]") || on) {
        form.querySelectorAll('input[name="thread"]').forEach(function (box) {
          box.checked = on;
        });
      }
    }
    refresh(form);
  });

  function refreshAll() {
    document.querySelectorAll("[data-bulk-form]").forEach(refresh);
  }
  document.addEventListener("htmx:afterSettle", refreshAll);
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", refreshAll);
  else refreshAll();
})();
