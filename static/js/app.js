// Every page: marks the document as scripted (the phone layout folds the main menu only then, so it
// stays usable without scripts) and opens / closes that menu. Loaded once in <head>: boosted
// navigation swaps the body, so the handlers are delegated from the document.
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  if (window.crmAppInstalled) return;
  window.crmAppInstalled = true;

  function setMenu(toggle, open) {
    var bar = toggle.closest("[data-topbar]");
    if (!bar) return;
    bar.classList.toggle("menu-open", open);
    toggle.setAttribute("aria-expanded", open ? "true" : "false");
  }

  document.addEventListener("click", function (event) {
    var toggle = event.target.closest && event.target.closest("[data-menu-toggle]");
    if (toggle) {
      setMenu(toggle, toggle.getAttribute("aria-expanded") !== "true");
    }
  });

  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape") return;
    var toggle = document.querySelector('[data-menu-toggle][aria-expanded="true"]');
    if (toggle) {
      setMenu(toggle, false);
      toggle.focus();
    }
  });
})();
