// pmcrash HTML report: selection of crash points. The page reads without this script;
// it only shows a selected crash point's detail in its workload's panel.
(function () {
  "use strict";
  var selected = null;

  function select(id, scroll) {
    var row = document.getElementById(id);
    if (!row || !row.classList.contains("point")) return false;
    var detail = document.getElementById(id + "-detail");
    var section = row.closest("section.workload");
    var panel = section && section.querySelector(".panel");
    if (!panel) return false;
    if (selected) {
      selected.forEach(function (el) { el.classList.remove("selected"); });
    }
    var markers = section.querySelectorAll('a.pt[data-point="' + id + '"]');
    selected = [row].concat(Array.prototype.slice.call(markers));
    selected.forEach(function (el) { el.classList.add("selected"); });
    var head = document.createElement("h4");
    head.className = "sel";
    head.textContent = "Crash point at record " + row.getAttribute("data-record");
    var copy;
    if (detail) {
      copy = detail.querySelector(".detail-body").cloneNode(true);
    } else {
      // No finding here: the point's row, with its table's header.
      var table = document.createElement("table");
      table.appendChild(row.closest("table").tHead.cloneNode(true));
      table.appendChild(document.createElement("tbody")).appendChild(row.cloneNode(true));
      var none = document.createElement("p");
      none.className = "none";
      none.textContent = "No finding at this crash point.";
      copy = document.createElement("div");
      copy.append(table, none);
    }
    // Ids inside the copy would repeat the table's.
    copy.querySelectorAll("[id]").forEach(function (el) { el.removeAttribute("id"); });
    panel.replaceChildren(head, copy);
    panel.setAttribute("data-selected", id);
    if (scroll) panel.scrollIntoView({ block: "nearest" });
    return true;
  }

  document.addEventListener("click", function (ev) {
    var a = ev.target.closest && ev.target.closest("a[data-point]");
    if (!a) return;
    var id = a.getAttribute("data-point");
    if (select(id, !a.classList.contains("pt"))) {
      ev.preventDefault();
      history.replaceState(null, "", "#" + id);
    }
  });

  function fromHash() {
    var id = decodeURIComponent(location.hash.slice(1));
    if (/^w\d+-p\d+$/.test(id)) select(id, true);
  }
  window.addEventListener("hashchange", fromHash);
  fromHash();
  document.documentElement.setAttribute("data-ready", "1");
})();
