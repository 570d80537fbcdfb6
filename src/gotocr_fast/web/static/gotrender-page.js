/* Boot script of a standalone rendered document: reads the answers from the JSON data block and
 * renders each into the page (see gotocr_fast/web/render.py). */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("got-data").textContent);
  var main = document.getElementById("got-document");
  data.sections.forEach(function (section) {
    var el = document.createElement("section");
    if (section.heading) {
      var h = document.createElement("h2");
      h.className = "got-section-heading";
      h.textContent = section.heading;
      el.appendChild(h);
    }
    var body = document.createElement("div");
    body.className = "got-answer";
    body.innerHTML = GotRender.renderToHtml(section.text);
    el.appendChild(body);
    main.appendChild(el);
  });
  document.documentElement.setAttribute("data-rendered", "true");
})();
