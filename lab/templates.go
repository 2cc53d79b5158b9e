package lab

import (
	"bytes"
	"embed"
	"strconv"
	"text/template"
)

// The server configurations are templates in files, not strings in code,
// so that they read like the configs an operator writes and can be
// compared with the ones docker/ ships.
//
//go:embed templates/*.tmpl
var templateFS embed.FS

// templates is parsed once at init and only executed afterwards, which is
// safe for concurrent use.
var templates = template.Must(template.New("").Funcs(template.FuncMap{
	// q quotes a string for Lua, YAML (double-quoted) and coturn's
	// config alike: all three accept Go's escapes for printable ASCII.
	"q": strconv.Quote,
}).ParseFS(templateFS, "templates/*.tmpl"))

func render(name string, data any) ([]byte, error) {
	var b bytes.Buffer
	if err := templates.ExecuteTemplate(&b, name, data); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
