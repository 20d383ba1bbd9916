"use strict";
(function () {
  var tbody = document.getElementById("samples");
  var rows = Array.prototype.slice.call(tbody.querySelectorAll("tr.sample"));
  var correctSelect = document.getElementById("filter-correct");
  var typeSelect = document.getElementById("filter-type");
  var sortSelect = document.getElementById("sort");
  var shown = document.getElementById("shown");

  function choose(select, value) {
    for (var i = 0; i < select.options.length; i++) {
      if (select.options[i].value === value) { select.value = value; return; }
    }
  }
  function readFragment() {
    var params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    if (params.has("filter")) choose(correctSelect, params.get("filter"));
    if (params.has("type")) choose(typeSelect, params.get("type"));
    if (params.has("sort")) choose(sortSelect, params.get("sort"));
  }
  function writeFragment() {
    var params = new URLSearchParams();
    if (correctSelect.value !== "all") params.set("filter", correctSelect.value);
    if (typeSelect.value !== "all") params.set("type", typeSelect.value);
    if (sortSelect.value !== "index") params.set("sort", sortSelect.value);
    var text = params.toString();
    history.replaceState(null, "", text ? "#" + text : window.location.pathname + window.location.search);
  }
  function score(row, key) {
    var value = parseFloat(row.getAttribute("data-score-" + key));
    return isNaN(value) ? -Infinity : value;
  }
  function apply() {
    var visible = 0;
    rows.forEach(function (row) {
      var keep = (correctSelect.value === "all" || row.getAttribute("data-correct") === correctSelect.value) &&
        (typeSelect.value === "all" || row.getAttribute("data-answer-type") === typeSelect.value);
      row.hidden = !keep;
      if (keep) visible += 1;
    });
    var order = rows.slice();
    if (sortSelect.value !== "index") {
      var parts = sortSelect.value.split(":");
      var sign = parts[1] === "asc" ? 1 : -1;
      order.sort(function (a, b) {
        var diff = (score(a, parts[0]) - score(b, parts[0])) * sign;
        return diff || (Number(a.getAttribute("data-index")) - Number(b.getAttribute("data-index")));
      });
    }
    order.forEach(function (row) { tbody.appendChild(row); });
    shown.textContent = "showing " + visible + " of " + rows.length;
    document.body.setAttribute("data-visible", String(visible));
  }
  [correctSelect, typeSelect, sortSelect].forEach(function (select) {
    select.addEventListener("change", function () { apply(); writeFragment(); });
  });
  window.addEventListener("hashchange", function () { readFragment(); apply(); });
  readFragment();
  apply();
})();
