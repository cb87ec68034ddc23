// Search-as-you-type for "add as a phrasing of": as the reviewer types, the entry list under the
// input is replaced by the entries whose number or phrasings match (/ops/entries.json).
(function () {
  "use strict";
  document.querySelectorAll("input[data-entry-search]").forEach((input) => {
    const list = document.getElementById(input.getAttribute("list"));
    let timer = null;
    let asked = "";
    input.addEventListener("input", () => {
      clearTimeout(timer);
      const query = input.value.trim();
      if (query.length < 2 || query.startsWith("#") && query.includes(" ")) return; // picked already
      timer = setTimeout(async () => {
        asked = query;
        const response = await fetch(input.dataset.entrySearch + "?q=" + encodeURIComponent(query), {
          credentials: "same-origin",
        });
        if (!response.ok || asked !== query) return;
        const { entries } = await response.json();
        list.replaceChildren(
          ...entries.map((entry) => {
            const option = document.createElement("option");
            option.value = "#" + entry.id + " " + entry.question;
            option.label = entry.category || "";
            return option;
          }),
        );
      }, 150);
    });
  });
})();
