// Rich-text fields of the template and signature editors (no inline code: the pages run under a CSP).
// The form's <textarea> stays the field: the editor shows instead of it and writes its HTML back on submit.
// Whatever is put into the editor is cleaned here for display; the server sanitises again on save.
(function () {
  "use strict";

  var DROP = "script,style,iframe,object,embed,link,meta,base,form,input,button,textarea,select";

  function clean(html) {
    var doc = new DOMParser().parseFromString("<body>" + (html || "") + "</body>", "text/html");
    doc.body.querySelectorAll(DROP).forEach(function (node) { node.remove(); });
    doc.body.querySelectorAll("*").forEach(function (node) {
      Array.prototype.slice.call(node.attributes).forEach(function (attr) {
        var name = attr.name.toLowerCase();
        var value = (attr.value || "").trim().toLowerCase();
        if (name.indexOf("on") === 0 || name === "style" || name === "srcdoc" ||
            ((name === "href" || name === "src") && /^(javascript|data|vbscript):/.test(value))) {
          node.removeAttribute(attr.name);
        }
      });
    });
    return doc.body.innerHTML;
  }

  function blockOf(node, editor) {
    while (node && node !== editor) {
      if (node.nodeType === 1 && /^(P|DIV|LI|BLOCKQUOTE|H1|H2|H3|PRE)$/.test(node.nodeName)) { return node; }
      node = node.parentNode;
    }
    return null;
  }

  function setup(field) {
    var textarea = field.querySelector("textarea");
    var editor = field.querySelector(".rich-editor");
    var toolbar = field.querySelector(".rich-toolbar");
    var status = field.querySelector(".rich-status");
    if (!textarea || !editor || editor.dataset.ready) { return; }
    editor.dataset.ready = "1";
    editor.innerHTML = clean(textarea.value);
    document.execCommand("defaultParagraphSeparator", false, "p");
    textarea.hidden = true;
    editor.hidden = false;
    toolbar.hidden = false;
    var saved = null;
    // Kept in step on every change, not only on submit: htmx serialises a boosted form in its own
    // submit handler, which may run before any other.
    function sync() { textarea.value = editor.innerHTML; }

    function remember() {
      var selection = window.getSelection();
      if (selection.rangeCount && editor.contains(selection.anchorNode)) { saved = selection.getRangeAt(0).cloneRange(); }
    }
    function restore() {
      editor.focus();
      if (saved) {
        var selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(saved);
      }
    }
    function insertHtml(html) {
      restore();
      document.execCommand("insertHTML", false, html);
      remember();
      sync();
    }
    editor.addEventListener("keyup", remember);
    editor.addEventListener("mouseup", remember);
    editor.addEventListener("input", function () { remember(); sync(); });
    editor.addEventListener("paste", function (event) {
      var html = event.clipboardData && event.clipboardData.getData("text/html");
      if (html) {
        event.preventDefault();
        insertHtml(clean(html));
      }
    });

    toolbar.addEventListener("click", function (event) {
      var button = event.target.closest("button[data-command]");
      if (!button) { return; }
      event.preventDefault();
      var command = button.dataset.command;
      restore();
      if (command === "createLink") {
        var url = window.prompt("Link address (https://…)", "https://");
        if (url && /^(https?:|mailto:|tel:)/i.test(url.trim())) { document.execCommand("createLink", false, url.trim()); }
      } else if (command === "direction") {
        var block = blockOf(window.getSelection().anchorNode, editor);
        if (!block) { document.execCommand("formatBlock", false, "p"); block = blockOf(window.getSelection().anchorNode, editor); }
        if (block) {
          var rtl = block.getAttribute("dir") !== "rtl";
          block.setAttribute("dir", rtl ? "rtl" : "auto");
          button.setAttribute("aria-pressed", rtl ? "true" : "false");
        }
      } else {
        document.execCommand(command, false, null);
      }
      remember();
      sync();
    });

    var upload = toolbar.querySelector("input[data-image-upload]");
    if (upload) {
      upload.addEventListener("change", function () {
        var file = upload.files[0];
        if (!file) { return; }
        var data = new FormData();
        data.append("image", file);
        var token = textarea.form.querySelector("[name=csrfmiddlewaretoken]");
        status.textContent = "Uploading " + file.name + "…";
        fetch(upload.dataset.imageUpload, {
          method: "POST", body: data, credentials: "same-origin",
          headers: { "X-CSRFToken": token ? token.value : "" }
        }).then(function (response) {
          return response.json().then(function (body) { return { ok: response.ok, body: body }; });
        }).then(function (result) {
          if (!result.ok) { status.textContent = result.body.error || "The image was not added."; return; }
          var img = document.createElement("img");
          img.src = result.body.url;
          img.alt = "";
          insertHtml(img.outerHTML);
          status.textContent = "Image added.";
        }).catch(function () { status.textContent = "The image was not added: the server could not be reached."; });
        upload.value = "";
      });
    }

    document.querySelectorAll("select[data-field-picker='#" + editor.id + "']").forEach(function (picker) {
      picker.addEventListener("change", function () {
        if (!picker.value) { return; }
        insertHtml("{{" + picker.value + "}}");
        picker.value = "";
      });
    });

    textarea.form.addEventListener("submit", sync, true);
  }

  function init(root) { (root || document).querySelectorAll("[data-rich-field]").forEach(setup); }
  init();
  document.addEventListener("htmx:load", function (event) { init(event.target); });
})();
