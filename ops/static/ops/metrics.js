// The metrics dashboard's charts, drawn by Chart.js (vendored) from the figures the page carries.
(function () {
  "use strict";
  if (!window.Chart) return;
  const data = JSON.parse(document.getElementById("metrics-data").textContent);
  const colours = {
    FAQ: "#2da44e",
    LLM: "#8250df",
    unanswered: "#bf8700",
    "handed off": "#cf222e",
    "no reply": "#8c959f",
    "a person": "#0969da",
  };
  new Chart(document.getElementById("chart-per-day"), {
    type: "bar",
    data: {
      labels: data.days,
      datasets: Object.entries(data.per_day).map(([label, values]) => ({
        label,
        data: values,
        backgroundColor: colours[label] || "#57606a",
      })),
    },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } } },
    },
  });
  const who = Object.keys(data.answered_by);
  new Chart(document.getElementById("chart-answered-by"), {
    type: "doughnut",
    data: {
      labels: who,
      datasets: [{ data: who.map((key) => data.answered_by[key]), backgroundColor: who.map((key) => colours[key]) }],
    },
    options: { animation: false, responsive: true, maintainAspectRatio: false },
  });
})();
