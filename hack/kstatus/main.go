// Command kstatus prints the kstatus verdict (sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute,
// the library Flux, Helm 4 and kpt use) of Kubernetes objects given as JSON.
//
//	kstatus FILE...     each FILE holds one object, a JSON array of objects, or a List (`items`)
//	kstatus < input     the same read from stdin when no FILE is given
//
// It prints one line per object, in input order: `<name>\t<status>\t<message>`, where `<name>` is
// metadata.name, `<status>` is InProgress, Failed, Current or Terminating, and tabs or newlines
// inside the message are replaced by spaces. It exits non-zero on unreadable input or when
// Compute returns an error.
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	var err error
	if len(os.Args) == 1 {
		err = run(out, "stdin", os.Stdin)
	} else {
		for _, path := range os.Args[1:] {
			if err = runFile(out, path); err != nil {
				break
			}
		}
	}
	if err != nil {
		out.Flush()
		fmt.Fprintf(os.Stderr, "kstatus: %v\n", err)
		os.Exit(1)
	}
}

func runFile(out io.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return run(out, path, f)
}

// run decodes one input (object, array of objects or List) and prints a line per object.
func run(out io.Writer, source string, r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("%s: %w", source, err)
	}
	objects, err := decode(data)
	if err != nil {
		return fmt.Errorf("%s: %w", source, err)
	}
	for i, obj := range objects {
		u := &unstructured.Unstructured{Object: obj}
		res, err := status.Compute(u)
		if err != nil {
			return fmt.Errorf("%s: object %d (%s): %w", source, i, u.GetName(), err)
		}
		fmt.Fprintf(out, "%s\t%s\t%s\n", u.GetName(), res.Status, oneLine(res.Message))
	}
	return nil
}

// decode uses apimachinery's JSON decoder, which keeps integers as int64 the way unstructured
// objects from the API do (encoding/json would make metadata.generation a float64, which
// Compute refuses).
func decode(data []byte) ([]map[string]interface{}, error) {
	trimmed := strings.TrimSpace(string(data))
	if strings.HasPrefix(trimmed, "[") {
		var list []map[string]interface{}
		if err := json.Unmarshal(data, &list); err != nil {
			return nil, err
		}
		return list, nil
	}
	var obj map[string]interface{}
	if err := json.Unmarshal(data, &obj); err != nil {
		return nil, err
	}
	if obj == nil {
		return nil, fmt.Errorf("not a JSON object")
	}
	if items, ok := obj["items"].([]interface{}); ok && strings.HasSuffix(fmt.Sprint(obj["kind"]), "List") {
		list := make([]map[string]interface{}, 0, len(items))
		for i, item := range items {
			m, ok := item.(map[string]interface{})
			if !ok {
				return nil, fmt.Errorf("items[%d] is not an object", i)
			}
			list = append(list, m)
		}
		return list, nil
	}
	return []map[string]interface{}{obj}, nil
}

func oneLine(s string) string {
	return strings.NewReplacer("\t", " ", "\r", " ", "\n", " ").Replace(s)
}
