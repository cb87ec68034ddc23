// The entry page's phrasings: a filter box above the list hides the rows that do not contain what
// is typed (an entry may have hundreds), and says how many match.
(function () {
  "use strict";
  const group = document.getElementById("variants-group");
  if (!group) return;
  const table = group.querySelector("table");
  if (!table) return;
  const rows = () => Array.from(table.querySelectorAll("tbody tr.form-row:not(.empty-form)"));
  const box = document.createElement("input");
  box.type = "search";
  box.id = "phrasing-filter";
  box.placeholder = "Filter phrasings";
  box.setAttribute("aria-label", "Filter phrasings");
  const count = document.createElement("span");
  count.className = "help";
  count.id = "phrasing-filter-count";
  const bar = document.createElement("div");
  bar.append(box, " ", count);
  table.parentElement.insertBefore(bar, table);

  function text(row) {
    const input = row.querySelector("td.field-text input, td.field-text textarea");
    return (input ? input.value : row.textContent).toLowerCase();
  }

  function apply() {
    const wanted = box.value.trim().toLowerCase();
    let shown = 0;
    const all = rows();
    all.forEach((row) => {
      const blank = !text(row).trim();
      const match = !wanted || blank || text(row).includes(wanted);
      row.hidden = !match;
      if (match && !blank) shown += 1;
    });
    const total = all.filter((row) => text(row).trim()).length;
    count.textContent = wanted ? shown + " of " + total + " phrasings" : total + " phrasings";
  }

  box.addEventListener("input", apply);
  apply();
})();
