// Sizes each message frame of the thread page to its content. The frames are sandboxed without
// scripts (mailsync/display.py); this page script reads their height from outside (same origin).
(function () {
  "use strict";

  function fit(frame) {
    var doc;
    try {
      doc = frame.contentDocument;
    } catch (error) {
      return; // not readable: keep the fixed height, the frame scrolls by itself
    }
    if (!doc || !doc.documentElement) return;
    // The root element's box is as tall as the mail (its scrollHeight would be at least the frame's).
    var height = Math.ceil(doc.documentElement.getBoundingClientRect().height);
    frame.style.height = Math.min(Math.max(height + 8, 40), 20000) + "px";
  }

  function watch(frame) {
    if (frame.dataset.fitted) return;
    frame.dataset.fitted = "1";
    var refit = function () {
      fit(frame);
      var doc = frame.contentDocument;
      if (doc) {
        // Images (inline, or remote once allowed) change the height after the first layout.
        Array.prototype.forEach.call(doc.images, function (image) {
          if (!image.complete) image.addEventListener("load", function () { fit(frame); });
        });
      }
    };
    frame.addEventListener("load", refit);
    if (frame.contentDocument && frame.contentDocument.readyState === "complete") refit();
  }

  function watchAll(root) {
    Array.prototype.forEach.call((root || document).querySelectorAll("iframe.message-frame"), watch);
  }

  watchAll(document);
  document.addEventListener("htmx:load", function (event) { watchAll(event.target); });
  window.addEventListener("resize", function () {
    Array.prototype.forEach.call(document.querySelectorAll("iframe.message-frame"), fit);
  });
})();
