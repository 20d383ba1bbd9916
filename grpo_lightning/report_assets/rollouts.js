"use strict";
(function () {
  var data = JSON.parse(document.getElementById("rollout-data").textContent);
  var stepSelect = document.getElementById("step");
  var component = document.getElementById("component");
  var minInput = document.getElementById("min");
  var maxInput = document.getElementById("max");
  var statusSelect = document.getElementById("status");
  var container = document.getElementById("groups");
  var shown = document.getElementById("shown");
  var trends = document.getElementById("trends");
  var stepLinks = trends ? Array.prototype.slice.call(trends.querySelectorAll("a")) : [];
  var index = 0;

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function textOrEmpty(tag, className, text) {
    // an empty text reads "(empty)", marked as such, rather than leaving an empty box
    if (text === null || text === undefined || String(text).trim() === "") return el(tag, "empty", "(empty)");
    return el(tag, className, text);
  }
  function stepOf(link) {
    return new URLSearchParams((link.getAttribute("href") || "").replace(/^#/, "")).get("step");
  }
  function fmt(value) { return value === null || value === undefined ? "\u2013" : Number(value).toFixed(3); }
  function status(group) {
    if (group.trained) return group.filtered ? "filled" : "trained";
    return group.filtered ? "filtered" : "unused";
  }
  function value(completion, key) {
    return key === "reward" ? completion.reward : completion.scores[key];
  }
  function bound(input) {
    var number = parseFloat(input.value);
    return isNaN(number) ? null : number;
  }
  function readFragment() {
    var params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    if (params.has("step")) {
      var found = data.steps.findIndex(function (s) { return String(s.step) === params.get("step"); });
      if (found >= 0) index = found;
    }
    if (params.has("component")) component.value = params.get("component");
    if (component.selectedIndex < 0) component.value = "reward";
    minInput.value = params.has("min") ? params.get("min") : "";
    maxInput.value = params.has("max") ? params.get("max") : "";
    if (params.has("status")) statusSelect.value = params.get("status");
    if (statusSelect.selectedIndex < 0) statusSelect.value = "all";
  }
  function writeFragment() {
    var params = new URLSearchParams();
    params.set("step", String(data.steps[index].step));
    if (component.value !== "reward") params.set("component", component.value);
    if (minInput.value !== "") params.set("min", minInput.value);
    if (maxInput.value !== "") params.set("max", maxInput.value);
    if (statusSelect.value !== "all") params.set("status", statusSelect.value);
    history.replaceState(null, "", "#" + params.toString());
  }
  function render() {
    var step = data.steps[index];
    stepSelect.value = String(step.step);
    container.textContent = "";
    var low = bound(minInput), high = bound(maxInput), key = component.value;
    var groupsShown = 0, completionsShown = 0;
    step.groups.forEach(function (group) {
      var state = status(group);
      var section = el("section", "group");
      section.setAttribute("data-prompt-id", group.prompt_id);
      section.setAttribute("data-status", state);
      section.setAttribute("data-rank", String(group.rank));
      section.setAttribute("data-round", String(group.round));
      var side = el("div", "side");
      var uri = data.images[group.image_path];
      if (uri) {
        var img = el("img");
        img.src = uri;
        img.alt = group.image_path;
        side.appendChild(img);
      } else {
        side.appendChild(el("div", "placeholder", "image not found: " + group.image_path));
      }
      side.appendChild(el("div", "label", "prompt " + group.prompt_id + " \u00b7 rank " + group.rank +
        " \u00b7 round " + group.round));
      side.appendChild(el("div", "label", state + " \u00b7 reward std " + fmt(group.reward_std)));
      side.appendChild(textOrEmpty("div", "question", group.question));
      if (group.answer !== null && group.answer !== undefined) side.appendChild(el("div", "answer",
        "answer: " + group.answer));
      section.appendChild(side);
      var list = el("ol", "completions");
      var order = group.completions.map(function (c, i) { return { c: c, i: i }; });
      order.sort(function (a, b) {
        var x = a.c.advantage === null ? a.c.reward : a.c.advantage;
        var y = b.c.advantage === null ? b.c.reward : b.c.advantage;
        return (y === null ? -Infinity : y) - (x === null ? -Infinity : x) || a.i - b.i;
      });
      var visible = 0;
      order.forEach(function (entry) {
        var c = entry.c, v = value(c, key);
        var keep = (low === null || (v !== null && v !== undefined && v >= low)) &&
          (high === null || (v !== null && v !== undefined && v <= high));
        var item = el("li", "completion");
        item.setAttribute("data-index", String(entry.i));
        item.setAttribute("data-advantage", c.advantage === null ? "" : String(c.advantage));
        item.setAttribute("data-reward", c.reward === null ? "" : String(c.reward));
        data.rewards.forEach(function (name, f) {
          var score = c.scores[name];
          item.setAttribute("data-score-" + data.keys[f], score === null || score === undefined ? "" : String(score));
        });
        item.hidden = !keep;
        if (keep) visible += 1;
        var numbers = el("div", "numbers");
        var advantage = el("span", c.advantage > 0 ? "positive" : (c.advantage < 0 ? "negative" : ""),
          "advantage " + fmt(c.advantage));
        numbers.appendChild(advantage);
        var parts = [" \u00b7 reward " + fmt(c.reward)];
        data.rewards.forEach(function (name) { parts.push(name + " " + fmt(c.scores[name])); });
        parts.push(c.length + " tokens");
        numbers.appendChild(document.createTextNode(parts.join(" \u00b7 ")));
        if (c.truncated) numbers.appendChild(el("span", "truncated", " \u00b7 truncated"));
        item.appendChild(numbers);
        item.appendChild(textOrEmpty("pre", "", c.text));
        list.appendChild(item);
      });
      section.appendChild(list);
      var statusKeep = statusSelect.value === "all" || statusSelect.value === state ||
        (statusSelect.value === "filtered" && state === "filled") ||
        (statusSelect.value === "trained" && state === "filled");
      section.hidden = !statusKeep || visible === 0;
      if (!section.hidden) { groupsShown += 1; completionsShown += visible; }
      container.appendChild(section);
    });
    shown.textContent = "step " + step.step + " (" + (index + 1) + " of " + data.steps.length + "): " +
      groupsShown + " of " + step.groups.length + " groups, " + completionsShown + " completions shown";
    document.body.setAttribute("data-step", String(step.step));
    document.body.setAttribute("data-visible-groups", String(groupsShown));
    document.body.setAttribute("data-visible-completions", String(completionsShown));
    document.getElementById("prev").disabled = index === 0;
    document.getElementById("next").disabled = index === data.steps.length - 1;
    stepLinks.forEach(function (link) { link.classList.toggle("current", stepOf(link) === String(step.step)); });
  }
  function go(to) { index = Math.max(0, Math.min(data.steps.length - 1, to)); render(); writeFragment(); }
  document.getElementById("prev").addEventListener("click", function () { go(index - 1); });
  document.getElementById("next").addEventListener("click", function () { go(index + 1); });
  stepSelect.addEventListener("change", function () { go(stepSelect.selectedIndex); });
  [component, minInput, maxInput, statusSelect].forEach(function (control) {
    control.addEventListener("change", function () { render(); writeFragment(); });
  });
  if (trends) trends.addEventListener("click", function (event) {
    var link = event.target.closest("a");
    if (!link) return;
    var found = data.steps.findIndex(function (s) { return String(s.step) === stepOf(link); });
    if (found < 0) return;
    event.preventDefault();  // the link's fragment names the step alone: going there here keeps the filters
    go(found);
    document.getElementById("step-groups").scrollIntoView();
  });
  document.addEventListener("keydown", function (event) {
    if (event.target.tagName === "INPUT") return;
    if (event.key === "ArrowLeft") go(index - 1);
    if (event.key === "ArrowRight") go(index + 1);
  });
  window.addEventListener("hashchange", function () { readFragment(); render(); });
  readFragment();
  render();
})();
