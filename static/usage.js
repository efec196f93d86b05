// Deskgate admin: the usage page's chart of desktop VMs, by day (a month) or by month (a year).
//
// Running and connected hours are bars on the left axis, the cost a line on the right one. The
// figures come from the page itself (the canvas's data-series, written by the server from the
// same report as the tables below), so the chart and the tables cannot disagree. Chart.js is
// loaded from npm's package by the page (/chartjs/); without it, or without script, the chart
// stays hidden and the tables say it all.

const card = document.getElementById('usage-chart-card');
const canvas = document.getElementById('usage-chart');
const Chart = window.Chart;

function shortLabel(label, by) {
    // 2025-03-07 -> 7 (the month is in the heading); a year's months keep YYYY-MM.
    return by === 'day' ? String(Number(label.slice(8))) : label;
}

function draw(series) {
    const css = getComputedStyle(document.documentElement);
    const colour = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
    const primary = colour('--primary', '#1f5fbf');
    const ok = colour('--ok', '#1d7a46');
    const money = new Intl.NumberFormat(undefined, {minimumFractionDigits: 2,
        maximumFractionDigits: 2});
    const hours = new Intl.NumberFormat(undefined, {maximumFractionDigits: 2});
    return new Chart(canvas, {
        data: {
            labels: series.labels.map((l) => shortLabel(l, series.by)),
            datasets: [
                {type: 'bar', label: 'Running hours', data: series.running, yAxisID: 'hours',
                    backgroundColor: `${primary}cc`, order: 2},
                {type: 'bar', label: 'Connected hours', data: series.connected, yAxisID: 'hours',
                    backgroundColor: `${ok}aa`, order: 3},
                {type: 'line', label: 'Cost', data: series.cost, yAxisID: 'cost',
                    borderColor: '#b26a00', backgroundColor: '#b26a00', pointRadius: 2,
                    tension: 0, order: 1},
            ],
        },
        options: {
            responsive: true,
            maintainAspectRatio: false,
            animation: false,
            interaction: {mode: 'index', intersect: false},
            scales: {
                x: {title: {display: true, text: series.by === 'day' ? 'Day' : 'Month'},
                    grid: {display: false}},
                hours: {type: 'linear', position: 'left', beginAtZero: true,
                    title: {display: true, text: 'Hours'}},
                cost: {type: 'linear', position: 'right', beginAtZero: true,
                    title: {display: true, text: 'Cost'}, grid: {drawOnChartArea: false}},
            },
            plugins: {
                legend: {position: 'bottom'},
                tooltip: {
                    callbacks: {
                        title: (items) => series.labels[items[0].dataIndex],
                        label: (item) => (item.dataset.yAxisID === 'cost'
                            ? `${item.dataset.label}: ${money.format(item.parsed.y)}`
                            : `${item.dataset.label}: ${hours.format(item.parsed.y)}`),
                    },
                },
            },
        },
    });
}

if (card && canvas && typeof Chart === 'function') {
    let series = null;
    try {
        series = JSON.parse(canvas.dataset.series);
    } catch (err) {
        series = null;
    }
    if (series && Array.isArray(series.labels)) {
        card.hidden = false;
        draw(series);
    }
}
