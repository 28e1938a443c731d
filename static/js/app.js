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

// Add a mail account: a port field follows its security choice (SSL/TLS 993 / 465, STARTTLS 143 / 587)
// unless the user typed a port of their own. The ports come from the form (data-default-ports).
(function () {
  "use strict";
  if (window.crmPortDefaultsInstalled) return;
  window.crmPortDefaultsInstalled = true;

  document.addEventListener("change", function (event) {
    var select = event.target;
    if (!select.matches || !select.matches("select[data-default-ports]")) return;
    var ports = JSON.parse(select.getAttribute("data-default-ports"));
    var field = document.getElementById(select.getAttribute("data-port-field"));
    if (!field || !(select.value in ports)) return;
    var known = Object.keys(ports).map(function (key) { return String(ports[key]); });
    if (field.value === "" || known.indexOf(field.value) !== -1) {
      field.value = ports[select.value];
    }
  });
})();
