// Starts ReDoc on /redoc (a file, not an inline script: see swagger-init.js).
(function () {
  "use strict";
  var root = document.getElementById("redoc");
  window.Redoc.init(root.getAttribute("data-openapi-url"), { hideDownloadButton: false }, root);
})();
