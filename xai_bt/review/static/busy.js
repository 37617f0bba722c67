// xai_bt review page: while a scan is explained, disable the button and say what is running and for how long.
// Served by the app itself (Content-Security-Policy script-src 'self'); no inline code, nothing from elsewhere.
// The estimate comes from the server: each model <option> carries the seconds per method measured on this
// machine (data-seconds) and whether the model is loaded (data-loaded).
"use strict";

(function () {
  var timer = null;

  function duration(seconds) {
    if (seconds < 90) {
      return Math.max(1, Math.round(seconds)) + " s";
    }
    return Math.round(seconds / 60) + " min";
  }

  function chosenMethods(form) {
    var checked = Array.prototype.slice.call(form.querySelectorAll('input[name="methods"]:checked'));
    if (checked.length) {
      return checked;
    }
    return Array.prototype.slice.call(form.querySelectorAll('input[name="methods"][data-default="1"]'));
  }

  function estimate(option, methods) {
    var seconds = {};
    try {
      seconds = JSON.parse(option.getAttribute("data-seconds") || "{}");
    } catch (e) {
      seconds = {};
    }
    var total = 0;
    var untimed = [];
    methods.forEach(function (box) {
      var s = seconds[box.value];
      if (typeof s === "number") {
        total += s;
      } else {
        untimed.push(box.getAttribute("data-label") || box.value);
      }
    });
    var parts = [];
    if (untimed.length < methods.length) {
      parts.push("about " + duration(total) + " on this CPU");
    }
    if (untimed.length) {
      parts.push((untimed.length < methods.length ? "plus " : "") + untimed.join(", ") + ": not yet timed on this CPU");
    }
    if (option.getAttribute("data-loaded") !== "1") {
      parts.push("the model is loaded first");
    }
    return parts.length ? " (" + parts.join("; ") + ")" : "";
  }

  function start(form) {
    var busy = document.getElementById("busy");
    var text = document.getElementById("busy-text");
    var elapsed = document.getElementById("busy-elapsed");
    var button = document.getElementById("submit");
    var scan = document.getElementById("scan");
    var model = document.getElementById("model");
    if (!busy || !text || !model || !scan) {
      return;
    }
    var option = model.options[model.selectedIndex];
    var file = scan.files && scan.files.length ? scan.files[0].name : "the scan";
    text.textContent = "Explaining " + file + " with " + option.value + "\u2026" +
      estimate(option, chosenMethods(form));
    busy.hidden = false;
    if (button) {
      button.disabled = true;    // after the submit event began: the form is still sent, but only once
    }
    var began = Date.now();
    timer = window.setInterval(function () {
      if (elapsed) {
        elapsed.textContent = Math.round((Date.now() - began) / 1000) + " s so far";
      }
    }, 1000);
  }

  function reset() {
    // back from the result page (a page restored from the browser's cache): ready for another scan
    var busy = document.getElementById("busy");
    var button = document.getElementById("submit");
    if (timer !== null) {
      window.clearInterval(timer);
      timer = null;
    }
    if (busy) {
      busy.hidden = true;
    }
    if (button) {
      button.disabled = false;
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("upload");
    if (!form) {
      return;
    }
    form.addEventListener("submit", function () {
      start(form);
    });
    window.addEventListener("pageshow", function (event) {
      if (event.persisted) {
        reset();
      }
    });
  });
})();
