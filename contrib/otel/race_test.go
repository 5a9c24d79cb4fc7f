//go:build race

package courierotel_test

const raceEnabled = true
