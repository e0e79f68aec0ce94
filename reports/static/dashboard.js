// taskmeter finance dashboard: small progressive enhancements (the pages work without script).
// - a changed filter submits its form (the filters live in the URL, so a view can be shared);
// - a loading bar while the next page is on its way.
(function () {
  "use strict";

  function loading() {
    document.body.classList.add("is-loading");
  }

  // Coming back through the browser's history shows the page as it was: not loading.
  window.addEventListener("pageshow", function () {
    document.body.classList.remove("is-loading");
  });

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form[data-auto-submit]").forEach(function (form) {
      form.querySelectorAll("select").forEach(function (select) {
        select.addEventListener("change", function () {
          loading();
          form.submit();
        });
      });
      form.addEventListener("submit", loading);
    });

    document.querySelectorAll("a[href^='/dashboard']").forEach(function (link) {
      if (link.hasAttribute("download")) {
        return;
      }
      link.addEventListener("click", function (event) {
        if (!event.defaultPrevented && event.button === 0 && !event.metaKey && !event.ctrlKey && !event.shiftKey) {
          loading();
        }
      });
    });
  });
})();
