// The composer (templates/mailsync/compose/compose.html): the Squire editor (static/vendor/squire) over
// the body, autosave, uploads with progress, inline images (pasted or chosen), address suggestions and
// checks as typed. The server sanitises the body again (nh3) and builds the message; nothing here is
// trusted. No inline scripts (the site's CSP): everything is wired from data- attributes.
(function () {
  "use strict";

  var SAVE_EVERY_MS = 4000;

  function csrfToken(form) {
    var input = form.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function formatSize(bytes) {
    if (bytes < 1024) return bytes + " bytes";
    if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(0) + " KB";
    return (bytes / 1024 / 1024).toFixed(1) + " MB";
  }

  function init(form) {
    if (form.dataset.ready) return;
    form.dataset.ready = "1";
    var textarea = form.querySelector("[data-body]");
    var editorNode = form.querySelector("[data-editor]");
    var toolbar = form.querySelector("[data-editor-toolbar]");
    var status = document.querySelector("[data-save-status]");
    var editor = null;
    var dirty = false;
    var sending = false;

    // --- the editor ---------------------------------------------------------------------------------
    if (window.Squire && editorNode && textarea) {
      editor = new window.Squire(editorNode, { blockTag: "DIV", blockAttributes: { dir: "auto" } });
      editor.setHTML(textarea.value || "");
      editorNode.hidden = false;
      toolbar.hidden = false;
      textarea.hidden = true;
      textarea.setAttribute("aria-hidden", "true");
      editor.addEventListener("input", function () { dirty = true; });
      editor.addEventListener("pathChange", updateToolbar);
      editor.addEventListener("pasteImage", function (event) {
        var items = event.detail.clipboardData.items;
        for (var i = 0; i < items.length; i += 1) {
          if (items[i].type.indexOf("image/") === 0) uploadInline(items[i].getAsFile());
        }
      });
    }

    function syncBody() {
      if (editor) textarea.value = editor.getHTML();
    }

    function blockDirection() {
      if (!editor) return "";
      var node = editor.getSelection().startContainer;
      while (node && node !== editorNode) {
        if (node.nodeType === 1 && node.getAttribute("dir")) return node.getAttribute("dir");
        node = node.parentNode;
      }
      return "";
    }

    function updateToolbar() {
      var rtl = toolbar.querySelector('[data-command="rtl"]');
      if (rtl) rtl.setAttribute("aria-pressed", blockDirection() === "rtl" ? "true" : "false");
    }

    var commands = {
      bold: function () { editor.hasFormat("B") ? editor.removeBold() : editor.bold(); },
      italic: function () { editor.hasFormat("I") ? editor.removeItalic() : editor.italic(); },
      underline: function () { editor.hasFormat("U") ? editor.removeUnderline() : editor.underline(); },
      ul: function () { editor.hasFormat("UL") ? editor.removeList() : editor.makeUnorderedList(); },
      ol: function () { editor.hasFormat("OL") ? editor.removeList() : editor.makeOrderedList(); },
      quote: function () { editor.hasFormat("BLOCKQUOTE") ? editor.decreaseQuoteLevel() : editor.increaseQuoteLevel(); },
      link: function () {
        var url = window.prompt("Link address (https://…)", "https://");
        if (!url) return;
        if (!/^(https?:|mailto:)/i.test(url)) url = "https://" + url;
        editor.makeLink(url);
      },
      image: function () { form.querySelector("[data-image-input]").click(); },
      rtl: function () {
        editor.setTextDirection(blockDirection() === "rtl" ? "ltr" : "rtl");
        updateToolbar();
      },
    };

    if (toolbar) {
      toolbar.addEventListener("click", function (event) {
        var button = event.target.closest("[data-command]");
        if (!button || !editor) return;
        event.preventDefault();
        commands[button.getAttribute("data-command")]();
        dirty = true;
        editor.focus();
      });
    }

    // --- autosave -----------------------------------------------------------------------------------
    function formData() {
      syncBody();
      var data = new FormData(form);
      data.delete("when");
      return data;
    }

    function save() {
      if (!dirty || sending) return;
      dirty = false;
      fetch(form.dataset.saveUrl, { method: "POST", body: formData(), credentials: "same-origin" })
        .then(function (response) { return response.text().then(function (text) { return [response.ok, text]; }); })
        .then(function (result) {
          if (status) status.textContent = result[1];
          if (!result[0]) dirty = true;
        })
        .catch(function () {
          dirty = true;
          if (status) status.textContent = "Not saved: the connection failed. Retrying…";
        });
    }

    form.addEventListener("input", function () { dirty = true; });
    form.addEventListener("change", function () { dirty = true; });
    initTemplates(form, editor, syncBody, function () { dirty = true; });
    window.setInterval(save, SAVE_EVERY_MS);

    function saveOnLeave() {
      if (!dirty || sending) return;
      dirty = false;
      navigator.sendBeacon(form.dataset.saveUrl, formData());
    }
    window.addEventListener("pagehide", saveOnLeave);
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "hidden") saveOnLeave();
    });
    document.body.addEventListener("htmx:beforeRequest", saveOnLeave);

    form.addEventListener("submit", function () {
      syncBody();
      sending = true;
    });

    var discard = document.getElementById("discard-form");
    if (discard) {
      discard.addEventListener("submit", function (event) {
        if (!window.confirm(discard.dataset.confirm)) event.preventDefault();
        else sending = true;
      });
    }

    // --- files ----------------------------------------------------------------------------------------
    var list = form.querySelector("[data-attachment-list]");
    var uploadError = form.querySelector("[data-upload-error]");

    function upload(file, inline, onDone) {
      var row = null;
      var bar = null;
      if (!inline) {
        row = document.createElement("li");
        var name = document.createElement("span");
        name.textContent = file.name;
        name.setAttribute("dir", "auto");
        bar = document.createElement("progress");
        bar.max = 100;
        bar.value = 0;
        bar.setAttribute("aria-label", "Uploading " + file.name);
        row.appendChild(name);
        row.appendChild(document.createTextNode(" "));
        row.appendChild(bar);
        list.appendChild(row);
      }
      var data = new FormData();
      data.append("file", file, file.name || "image.png");
      data.append("inline", inline ? "1" : "0");
      data.append("csrfmiddlewaretoken", csrfToken(form));
      var request = new XMLHttpRequest();
      request.open("POST", form.dataset.uploadUrl);
      request.responseType = "json";
      request.upload.addEventListener("progress", function (event) {
        if (bar && event.lengthComputable) bar.value = Math.round((event.loaded / event.total) * 100);
      });
      request.addEventListener("load", function () {
        var body = request.response || {};
        if (request.status !== 200) {
          uploadError.textContent = (body && body.error) || "The file could not be attached.";
          if (row) row.remove();
          return;
        }
        uploadError.textContent = "";
        if (row) {
          row.textContent = "";
          row.dataset.attachment = body.id;
          var link = document.createElement("a");
          link.href = body.url;
          link.textContent = body.name;
          link.setAttribute("dir", "auto");
          link.setAttribute("hx-boost", "false");
          var size = document.createElement("span");
          size.className = "muted small";
          size.textContent = " " + formatSize(body.size) + " ";
          var remove = document.createElement("button");
          remove.type = "button";
          remove.className = "link small";
          remove.textContent = "Remove";
          remove.dataset.removeUrl = body.remove_url;
          row.appendChild(link);
          row.appendChild(size);
          row.appendChild(remove);
        }
        if (onDone) onDone(body);
      });
      request.addEventListener("error", function () {
        uploadError.textContent = "The upload failed: check the connection and try again.";
        if (row) row.remove();
      });
      request.send(data);
    }

    function uploadInline(file) {
      if (!file || !editor) return;
      upload(file, true, function (body) {
        editor.insertImage(body.url, { alt: body.name });
        dirty = true;
        save();
      });
    }

    var fileInput = form.querySelector("[data-file-input]");
    if (fileInput) {
      fileInput.addEventListener("change", function () {
        Array.prototype.forEach.call(fileInput.files, function (file) { upload(file, false); });
        fileInput.value = "";
      });
    }
    var imageInput = form.querySelector("[data-image-input]");
    if (imageInput) {
      imageInput.addEventListener("change", function () {
        Array.prototype.forEach.call(imageInput.files, uploadInline);
        imageInput.value = "";
      });
    }
    list.addEventListener("click", function (event) {
      var button = event.target.closest("[data-remove-url]");
      if (!button) return;
      var data = new FormData();
      data.append("csrfmiddlewaretoken", csrfToken(form));
      fetch(button.dataset.removeUrl, { method: "POST", body: data, credentials: "same-origin" }).then(function (response) {
        if (response.ok) button.closest("li").remove();
      });
    });

    // --- addresses ------------------------------------------------------------------------------------
    var showCopies = form.querySelector("[data-show-copies]");
    if (showCopies) {
      showCopies.addEventListener("click", function () {
        form.querySelectorAll("[data-copies]").forEach(function (row) { row.hidden = false; });
        showCopies.hidden = true;
        form.querySelector("#compose-cc").focus();
      });
    }

    function lastToken(value) {
      var parts = value.split(/[,;]/);
      return parts[parts.length - 1].trim();
    }

    function checkField(input) {
      var data = new FormData();
      data.append("value", input.value);
      data.append("csrfmiddlewaretoken", csrfToken(form));
      var error = input.parentNode.querySelector("[data-address-error]");
      fetch(form.dataset.checkUrl, { method: "POST", body: data, credentials: "same-origin" })
        .then(function (response) { return response.text(); })
        .then(function (text) {
          error.textContent = text;
          input.setAttribute("aria-invalid", text ? "true" : "false");
        });
    }

    form.querySelectorAll("[data-address-field]").forEach(function (input) {
      var box = document.createElement("ul");
      box.className = "suggestions";
      box.hidden = true;
      box.setAttribute("role", "listbox");
      input.parentNode.insertBefore(box, input.nextSibling);
      var timer = null;

      function choose(item) {
        var parts = input.value.split(/[,;]/);
        parts.pop();
        var chosen = item.name ? item.name.replace(/["<>]/g, "") + " <" + item.address + ">" : item.address;
        parts.push(chosen);
        input.value = parts.map(function (part) { return part.trim(); }).filter(Boolean).join(", ") + ", ";
        box.hidden = true;
        dirty = true;
        input.focus();
      }

      input.addEventListener("input", function () {
        window.clearTimeout(timer);
        var query = lastToken(input.value);
        if (query.length < 2) { box.hidden = true; return; }
        timer = window.setTimeout(function () {
          fetch(form.dataset.suggestUrl + "?q=" + encodeURIComponent(query), { credentials: "same-origin" })
            .then(function (response) { return response.json(); })
            .then(function (body) {
              box.textContent = "";
              body.suggestions.forEach(function (item) {
                var li = document.createElement("li");
                li.setAttribute("role", "option");
                li.tabIndex = -1;
                li.textContent = item.name ? item.name + " <" + item.address + ">" : item.address;
                li.addEventListener("mousedown", function (event) { event.preventDefault(); choose(item); });
                li.addEventListener("keydown", function (event) { if (event.key === "Enter") { event.preventDefault(); choose(item); } });
                box.appendChild(li);
              });
              box.hidden = body.suggestions.length === 0;
            });
        }, 200);
      });
      input.addEventListener("keydown", function (event) {
        if (event.key === "ArrowDown" && !box.hidden && box.firstChild) { event.preventDefault(); box.firstChild.focus(); }
        if (event.key === "Escape") box.hidden = true;
      });
      input.addEventListener("blur", function () {
        window.setTimeout(function () { box.hidden = true; }, 150);
        checkField(input);
      });
    });
  }

  // --- templates, signatures and the preview (Settings > Email templates) ----------------------------
  function addressesOf(form) {
    var found = [];
    ["to", "cc"].forEach(function (name) {
      var field = form.querySelector("[name=" + name + "]");
      (field ? field.value : "").split(/[,;]/).forEach(function (token) {
        var angle = token.match(/<([^<>]+)>/);
        var address = (angle ? angle[1] : token).trim();
        if (address.indexOf("@") > 0) found.push(address);
      });
    });
    return found;
  }

  function initTemplates(form, editor, syncBody, markDirty) {
    var panel = form.querySelector("[data-template-panel]");
    var status = form.querySelector("[data-template-status]");
    var subject = form.querySelector("[name=subject]");
    var account = form.querySelector("[name=account]");
    if (!editor || !panel) return;
    panel.hidden = false;

    panel.addEventListener("click", function (event) {
      var pick = event.target.closest("[data-template-fill]");
      if (!pick) return;
      event.preventDefault();
      var params = new URLSearchParams();
      addressesOf(form).forEach(function (address) { params.append("to", address); });
      if (form.dataset.record) params.append("record", form.dataset.record);
      if (account && account.value) params.append("account", account.value);
      fetch(pick.dataset.templateFill + "?" + params.toString(), { credentials: "same-origin" })
        .then(function (response) { if (!response.ok) throw new Error(String(response.status)); return response.json(); })
        .then(function (body) {
          if (subject && !subject.value.trim()) subject.value = body.subject;
          editor.focus();
          editor.insertHTML(body.body_html);
          syncBody();
          markDirty();
          panel.open = false;
          if (body.missing.length) {
            status.textContent = "Fill in before sending (highlighted): " +
              body.missing.map(function (item) { return item.label; }).join(", ") + ".";
          } else {
            status.textContent = "";
          }
        })
        .catch(function () { status.textContent = "The template could not be inserted. Try again."; });
    });

    if (account && form.dataset.signatureUrl) {
      account.addEventListener("change", function () {
        var data = new FormData();
        data.append("account", account.value);
        data.append("csrfmiddlewaretoken", form.querySelector("[name=csrfmiddlewaretoken]").value);
        fetch(form.dataset.signatureUrl, { method: "POST", body: data, credentials: "same-origin" })
          .then(function (response) { if (!response.ok) throw new Error(String(response.status)); return response.text(); })
          .then(function (block) {
            var root = editor.getRoot();
            var old = root.querySelector("[data-signature]");
            var holder = document.createElement("div");
            holder.innerHTML = window.DOMPurify ? window.DOMPurify.sanitize(block) : "";
            var fresh = holder.firstElementChild;
            if (!fresh) return;
            if (old) old.replaceWith(fresh); else root.appendChild(fresh);
            syncBody();
            markDirty();
          })
          .catch(function () { status.textContent = "The signature of that account could not be loaded."; });
      });
    }

    var fieldRow = form.querySelector("[data-field-picker-row]");
    var fieldPicker = form.querySelector("[data-compose-field-picker]");
    if (fieldRow && fieldPicker) {
      fieldRow.hidden = false;
      fieldPicker.addEventListener("change", function () {
        if (!fieldPicker.value) return;
        editor.focus();
        editor.insertPlainText("{{" + fieldPicker.value + "}}");
        fieldPicker.value = "";
        syncBody();
        markDirty();
      });
    }

    var previewButton = form.querySelector("[data-preview]");
    var dialog = document.querySelector("[data-preview-dialog]");
    if (previewButton && dialog && form.dataset.previewUrl) {
      previewButton.hidden = false;
      previewButton.addEventListener("click", function () {
        syncBody();
        var data = new FormData(form);
        data.delete("when");
        fetch(form.dataset.previewUrl, { method: "POST", body: data, credentials: "same-origin" })
          .then(function (response) { return response.json(); })
          .then(function (body) {
            if (body.error) { status.textContent = body.error; return; }
            dialog.querySelector("[data-preview-subject]").textContent = body.subject || "(no subject)";
            dialog.querySelector("[data-preview-missing]").textContent = body.missing.length ?
              "Sending waits until these have a value or a fallback: " + body.missing.join(", ") + "." : "";
            dialog.querySelector("[data-preview-frame]").srcdoc = body.document;
            dialog.showModal();
          })
          .catch(function () { status.textContent = "The preview could not be made. Try again."; });
      });
      dialog.querySelector("[data-preview-close]").addEventListener("click", function () { dialog.close(); });
    }
  }

  function start() {
    var form = document.getElementById("composer");
    if (form) init(form);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
  document.addEventListener("htmx:afterSettle", start);
})();
