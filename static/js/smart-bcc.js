// Settings > Smart BCC: the "Copy" button next to the personal address. The button is hidden until this
// script runs (without JavaScript the read-only field can still be selected and copied by hand). Event
// delegation on the document, installed once, so it keeps working after htmx swaps the page body.
(function () {
  "use strict";
  if (window.smartBccCopyInstalled) {
    reveal();
    return;
  }
  window.smartBccCopyInstalled = true;

  function reveal() {
    document.querySelectorAll("[data-copy-target]").forEach(function (button) {
      button.hidden = false;
    });
  }

  function say(button, text) {
    var status = button.parentElement.querySelector("[data-copy-status]");
    if (status) status.textContent = text;
  }

  function copyBySelection(field) {
    field.focus();
    field.select();
    try {
      return document.execCommand("copy");
    } catch (error) {
      return false;
    }
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("[data-copy-target]");
    if (!button) return;
    var field = document.querySelector(button.getAttribute("data-copy-target"));
    if (!field) return;
    var done = function () { say(button, "Copied"); };
    var fallback = function () {
      say(button, copyBySelection(field) ? "Copied" : "Press Ctrl+C (or Cmd+C) to copy");
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(field.value).then(done, fallback);
    } else {
      fallback();
    }
  });

  document.addEventListener("htmx:afterSettle", reveal);
  reveal();
})();
