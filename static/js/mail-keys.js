// Keyboard shortcuts of the mail list and the conversation page (the keys a Gmail user knows).
// Each key presses a control that is on the page anyway (a link or a button marked data-shortcut, or a
// bulk action button of the list), so a shortcut never does what the page could not do by mouse.
// The "?" key or button opens the help dialog (templates/mailsync/inbox/_shortcuts.html).
// Keys are ignored while typing in a field and with Ctrl, Alt or Cmd held.
(function () {
  "use strict";
  if (window.mailKeysInstalled) return;
  window.mailKeysInstalled = true;

  function typing(target) {
    if (!target || !target.closest) return false;
    return !!target.closest("input, textarea, select, [contenteditable=''], [contenteditable='true']");
  }

  function press(selector) {
    var control = document.querySelector(selector);
    if (!control) return false;
    control.click();
    return true;
  }

  function openHelp() {
    var dialog = document.getElementById("shortcuts-help");
    if (dialog && !dialog.open && dialog.showModal) dialog.showModal();
  }

  // --- the list: a cursor over the rows -----------------------------------------------------------
  function rows() {
    return Array.prototype.slice.call(document.querySelectorAll(".mail-list tr[data-thread]"));
  }

  function cursorRow() {
    return document.querySelector(".mail-list tr.cursor");
  }

  function moveCursor(step) {
    var all = rows();
    if (!all.length) return;
    var current = cursorRow();
    var index = current ? all.indexOf(current) + step : 0;
    index = Math.max(0, Math.min(all.length - 1, index));
    if (current) current.classList.remove("cursor");
    var row = all[index];
    row.classList.add("cursor");
    var link = row.querySelector("td.what a, td.who a");
    if (link) link.focus({ preventScroll: true });
    row.scrollIntoView({ block: "nearest" });
  }

  function bulkAction(action) {
    var form = document.querySelector("[data-bulk-form]");
    if (!form) return;
    var button = form.querySelector('[data-bulk-button][value="' + action + '"]');
    if (!button) return;
    var checked = form.querySelectorAll('input[name="thread"]:checked');
    if (!checked.length) {
      var row = cursorRow();
      var box = row && row.querySelector('input[name="thread"]');
      if (!box) return;
      box.checked = true;
      box.dispatchEvent(new Event("change", { bubbles: true }));
    }
    button.disabled = false;
    button.click();
  }

  function listKey(key) {
    switch (key) {
      case "j": moveCursor(1); return true;
      case "k": moveCursor(-1); return true;
      case "o":
      case "Enter": {
        var row = cursorRow();
        var link = row && row.querySelector("td.what a, td.who a");
        if (!link) return false;
        link.click();
        return true;
      }
      case "x": {
        var current = cursorRow();
        var box = current && current.querySelector('input[name="thread"]');
        if (!box) return false;
        box.checked = !box.checked;
        box.dispatchEvent(new Event("change", { bubbles: true }));
        return true;
      }
      case "e": bulkAction("archive"); return true;
      case "#": bulkAction("delete"); return true;
      case "U": bulkAction("unread"); return true;
      case "c": return press("[data-compose]");
      case "/": {
        var search = document.querySelector(".inbox-filters input[name=q]");
        if (!search) return false;
        search.focus();
        search.select();
        return true;
      }
    }
    return false;
  }

  // --- the conversation page: the toolbar's controls ------------------------------------------------
  function threadKey(key) {
    if (key === "/") {
      var back = document.querySelector("[data-search-url]");
      if (!back) return false;
      window.location.assign(back.getAttribute("data-search-url"));
      return true;
    }
    if ("raf".indexOf(key) !== -1) return press('[data-reply-shortcut="' + key + '"]');
    if ("jkueU#".indexOf(key) === -1) return false;
    return press('.thread-actions [data-shortcut="' + key + '"]');
  }

  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
    if (typing(event.target)) return;
    var dialog = document.getElementById("shortcuts-help");
    if (dialog && dialog.open) return; // the dialog handles Esc itself
    var key = event.key;
    var handled = false;
    if (key === "?") {
      openHelp();
      handled = !!dialog;
    } else if (document.querySelector(".mail-list, [data-bulk-form]")) {
      // Enter on a focused link already opens it; only take Enter when the cursor row has no focus.
      if (key === "Enter" && event.target.closest && event.target.closest("a, button")) return;
      handled = listKey(key);
    } else if (document.querySelector(".thread-actions")) {
      handled = threadKey(key);
    }
    if (handled) event.preventDefault();
  });

  document.addEventListener("click", function (event) {
    if (event.target.closest && event.target.closest("[data-shortcuts-open]")) openHelp();
  });

  // "/" on a conversation leads to its list with the search box focused.
  function focusSearchFromHash() {
    if (window.location.hash !== "#search") return;
    var search = document.querySelector(".inbox-filters input[name=q]");
    if (search) search.focus();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", focusSearchFromHash);
  else focusSearchFromHash();
  document.addEventListener("htmx:afterSettle", focusSearchFromHash);
})();
